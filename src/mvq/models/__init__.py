"""Model classes: MQVAE and Stackformer."""
