"""`mvq demo`: the whole pipeline end to end on a CPU in minutes, with a report to look at.

Steps: train the demo MQ-VAE → tokenize the data → train the class-conditional demo
Stackformer → train a small shape classifier → reconstruct held-out images and sample
images per class → metrics, plots and `index.html` in the output folder.
"""

from mvq.demo.pipeline import DEMO_METRICS, run_demo

__all__ = ["DEMO_METRICS", "run_demo"]
