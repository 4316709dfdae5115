"""The browser demo (`mvq app`): tokenize, generate and complete images on local models.

Needs the optional extra `mvq[app]` (Gradio); only `mvq.app.page` imports it.
"""
