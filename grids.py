"""Pictures made of pictures: the one grid helper of figures.py's figures, the digits study's
comparison sheet and a training's previews. Images are float32 RGB in 0..255, as images.py's.
"""
import numpy as np
from PIL import Image, ImageDraw, ImageFont

import images


def compose(rows, row_labels=(), column_labels=(), insets=None, gap=6, scale=None, font_size=None):
    """A grid of the images of `rows` (lists of images), row titles at the left and column titles
    above when given, `gap` px of white around each tile.

    Every tile takes the size of the first (resized smoothly), or with `scale` each is enlarged
    `scale` times by repeating pixels (small digits stay crisp). `insets` (one image per trailing
    column) go into each tile's lower left corner at a quarter of its height, as the paper shows
    the style image. Text is `font_size` px (default: a twentieth of the tile width, at least 12)."""
    first = rows[0][0]
    height, width = (first.shape[0] * scale, first.shape[1] * scale) if scale else first.shape[:2]
    size = font_size or max(12, width // 20)
    font = load_font(size)
    label_width = max((text_width(font, label) for label in row_labels), default=0)
    label_width = label_width + 2 * gap if label_width else 0
    column = max([width] + [text_width(font, label) + gap for label in column_labels])
    top = size + 2 * gap if column_labels else gap  # the first row's y
    left = label_width + gap if label_width else gap  # the first column's x
    columns = max(len(row) for row in rows)
    canvas = Image.new("RGB", (left + columns * (column + gap), top + len(rows) * (height + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for c, label in enumerate(column_labels):
        x = left + c * (column + gap)
        draw.text((x + (column - text_width(font, label)) // 2, gap), label, fill="black", font=font)
    for r, row in enumerate(rows):
        y = top + r * (height + gap)
        if row_labels:
            draw.text((gap, y + height // 2), row_labels[r], fill="black", font=font, anchor="lm")
        for c, image in enumerate(row):
            if scale:
                pixels = np.kron(image, np.ones((scale, scale, 1), np.float32))
            else:
                pixels = images.resize(image, height, width)
            tile = Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8))
            style_index = c - (len(row) - len(insets)) if insets else -1
            if style_index >= 0:
                inset = insets[style_index]
                shrink = (height // 4) / inset.shape[0]
                small = images.resize(inset, height // 4, max(1, round(inset.shape[1] * shrink)))
                tile.paste(Image.fromarray(np.round(small).astype(np.uint8)), (0, height - small.shape[0]))
            canvas.paste(tile, (left + c * (column + gap) + (column - width) // 2, y))
    return np.asarray(canvas, dtype=np.float32)


def load_font(size):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow before 10.1: a fixed bitmap font
        return ImageFont.load_default()


def text_width(font, text):
    left, _, right, _ = font.getbbox(text)
    return right - left
