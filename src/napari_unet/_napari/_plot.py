"""A small live line plot (train / validation loss and validation Dice) drawn with QPainter.

No plotting library is needed for three curves; this keeps the plugin's dependencies lean.
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

__all__ = ["CurvePlot"]

COLORS = {"train loss": "#4fc3f7", "val loss": "#ffb74d", "val Dice": "#81c784"}


class CurvePlot(QWidget):
    """Curves against epoch: losses on the left scale, Dice (0-1) on the right."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.series: dict[str, list[tuple[float, float]]] = {k: [] for k in COLORS}
        self.setMinimumHeight(160)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def clear(self) -> None:
        for v in self.series.values():
            v.clear()
        self.update()

    def add(self, name: str, x: float, y: float | None) -> None:
        if y is not None and math.isfinite(y):
            self.series[name].append((float(x), float(y)))
            self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt API
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        w, h = self.width(), self.height()
        left, right, top, bottom = 40, 40, 18, 20
        p.fillRect(0, 0, w, h, QColor("#262930"))
        p.setPen(QPen(QColor("#888888")))
        p.drawRect(left, top, w - left - right, h - top - bottom)
        xs = [x for s in self.series.values() for x, _ in s]
        losses = [y for k in ("train loss", "val loss") for _, y in self.series[k]]
        if not xs:
            p.drawText(left + 8, top + 20, "loss and Dice appear here after each epoch")
            return
        x0, x1 = min(xs), max(max(xs), min(xs) + 1)
        y1 = max(losses) * 1.05 if losses else 1.0

        def pt(x: float, y: float, scale: float) -> QPointF:
            px = left + (x - x0) / (x1 - x0) * (w - left - right)
            py = top + (1 - y / scale) * (h - top - bottom)
            return QPointF(px, py)

        p.drawText(4, top + 10, f"{y1:.2f}")
        p.drawText(4, h - bottom, "0")
        p.drawText(w - right + 4, top + 10, "1.0")
        p.drawText(w - right + 4, h - bottom, "0")
        p.drawText(left, h - 4, f"epoch {int(x0)}")
        p.drawText(w - right - 50, h - 4, f"{int(x1)}")
        legend_x = left + 6
        for name, color in COLORS.items():
            pts = self.series[name]
            scale = 1.0 if name == "val Dice" else y1
            pen = QPen(QColor(color))
            pen.setWidth(2)
            p.setPen(pen)
            for a, b in zip(pts, pts[1:], strict=False):
                p.drawLine(pt(*a, scale), pt(*b, scale))
            for a in pts[-1:]:
                p.drawEllipse(pt(*a, scale), 2.5, 2.5)
            p.drawText(legend_x, top - 4, name)
            legend_x += 8 * len(name) + 12
        p.setPen(QPen(Qt.GlobalColor.white))
        p.end()
