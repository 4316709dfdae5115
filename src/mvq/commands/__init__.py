"""One module per `mvq` command: `register` adds its parser, `run` does the work.

Why the imports of mvq's own modules sit inside `run` here, and nowhere else: `mvq` builds every
command's parser at start-up, so `mvq --help`, a typo or a bad option answers at once instead of
after importing torch, Lightning and the models. Everything a command needs is imported when it runs.
"""
