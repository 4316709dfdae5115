"""A small CNN that tells the synthetic shape kinds apart.

The demo uses it to check class-conditional samples: a sample counts as consistent when the
classifier assigns it the class it was asked for.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset


class ShapeClassifier(nn.Module):
    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                                 nn.MaxPool2d(2))

        self.features = nn.Sequential(block(3, width), block(width, 2 * width), block(2 * width, 4 * width))
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).mean(dim=(2, 3)))


def train_classifier(train_set: Dataset, val_set: Dataset, num_classes: int, epochs: int = 3,
                     batch_size: int = 64, lr: float = 3e-3, progress: bool = True, max_items: int | None = None
                     ) -> tuple[ShapeClassifier, float]:
    """Train on `train_set` (items with "image" and "label"); returns the model and its validation accuracy."""
    from torch.utils.data import Subset
    from tqdm.auto import tqdm

    if max_items is not None and max_items < len(train_set):
        train_set = Subset(train_set, range(max_items))
    model = ShapeClassifier(num_classes)
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    total = epochs * len(loader)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total)
    bar = tqdm(total=total, desc="classifier", disable=not progress, leave=False)
    model.train()
    for _ in range(epochs):
        for batch in loader:
            loss = F.cross_entropy(model(batch["image"]), batch["label"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.detach():.3f}")
    bar.close()
    model.eval()
    return model, accuracy(model, val_set)


@torch.no_grad()
def accuracy(model: ShapeClassifier, dataset: Dataset, batch_size: int = 256) -> float:
    correct = total = 0
    for batch in DataLoader(dataset, batch_size=batch_size):
        correct += (model(batch["image"]).argmax(1) == batch["label"]).sum()
        total += batch["label"].numel()
    return float(correct) / max(total, 1)


@torch.no_grad()
def predict(model: ShapeClassifier, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Predicted class of each image (B×3×R×R in [-1, 1])."""
    return torch.cat([model(images[i: i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])
