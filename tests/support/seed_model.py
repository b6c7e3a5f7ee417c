"""The seed notebooks' model, as wikiart-import-seed reads its state dict (tests/unit/cli/test_seed_import.py
and tests/integration/test_seed_import.py), and a class file as the notebooks wrote one."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet18

GENRES = ["abstract_painting", "cityscape", "genre_painting", "illustration", "landscape"]


# --- The notebooks' model classes (artist_final_wOutliers A:197-282, gcomb C:264-349), copied with
# their attribute names; only resnet50(ImageNet) -> resnet18(random), 2048 -> its 512 channels and
# smaller proj_dim / rnn_hidden differ, so the state dict has the notebooks' names and layout.
class AttnPool1D(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.w = nn.Linear(d, 1)

    def forward(self, x):
        a = self.w(x).squeeze(-1)
        a = torch.softmax(a, dim=1).unsqueeze(-1)
        return (x * a).sum(dim=1)


class ResNet50_RowColBiGRU(nn.Module):
    def __init__(self, num_classes, proj_dim=12, rnn_hidden=8, dropout=0.4, channels=512):
        super().__init__()
        base = resnet18(weights=None)
        self.stem = nn.Sequential(base.conv1, base.bn1, base.relu, base.maxpool,
                                  base.layer1, base.layer2, base.layer3, base.layer4)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.proj = nn.Sequential(nn.Conv2d(channels, proj_dim, kernel_size=1, bias=False),
                                  nn.BatchNorm2d(proj_dim), nn.ReLU(inplace=True))
        gru = dict(input_size=proj_dim, hidden_size=rnn_hidden, num_layers=2, batch_first=True,
                   bidirectional=True, dropout=0.2)
        self.row_gru = nn.GRU(**gru)
        self.col_gru = nn.GRU(**gru)
        self.row_pool = AttnPool1D(2 * rnn_hidden)
        self.col_pool = AttnPool1D(2 * rnn_hidden)
        self.dropout = nn.Dropout(dropout)
        self.fusion_dim = channels + (2 * rnn_hidden) + (2 * rnn_hidden)
        if num_classes is not None:
            self.head = nn.Linear(self.fusion_dim, num_classes)

    def extract_fused_features(self, x):
        f = self.stem(x)
        gap = self.gap(f).flatten(1)
        z = self.proj(f)
        B, C, H, W = z.shape
        row_seq = z.permute(0, 2, 3, 1).contiguous().view(B * H, W, C)
        row_out, _ = self.row_gru(row_seq)
        row_vec = self.row_pool(row_out.mean(dim=1).view(B, H, -1))
        col_seq = z.permute(0, 3, 2, 1).contiguous().view(B * W, H, C)
        col_out, _ = self.col_gru(col_seq)
        col_vec = self.col_pool(col_out.mean(dim=1).view(B, W, -1))
        return self.dropout(torch.cat([gap, row_vec, col_vec], dim=1))

    def forward(self, x):
        return self.head(self.extract_fused_features(x))


class ResNet50_RowColBiGRU_MultiTask(ResNet50_RowColBiGRU):
    def __init__(self, num_style_classes, num_artist_classes, num_genre_classes, **kw):
        super().__init__(None, **kw)
        self.style_head = nn.Linear(self.fusion_dim, num_style_classes)
        self.artist_head = nn.Linear(self.fusion_dim, num_artist_classes)
        self.genre_head = nn.Linear(self.fusion_dim, num_genre_classes)

    def forward(self, x):
        fused = self.extract_fused_features(x)
        return self.style_head(fused), self.artist_head(fused), self.genre_head(fused)


def class_file(path: Path, names: list[str]) -> Path:
    path.write_text("".join(f"{i} {n}\n" for i, n in enumerate(names)))
    return path
