"""The 20 object classes of the embedded worlds as silhouettes made of parts, one per VOC class (in
VOC's class order), loosely drawn after the real thing: what tells them apart is shape alone: the
parts, their proportions, and which parts move on their own (limbs swing, wheels spin, wings flap).

Object units: y points down, the silhouette fits in [-CANVAS_EXTENT, CANVAS_EXTENT]^2.
"""
from __future__ import annotations

from dataclasses import dataclass

CANVAS_EXTENT = 1.25


@dataclass(frozen=True)
class Part:
    kind: str  # "ellipse", "box" or "tri" (apex up before rotation)
    cx: float
    cy: float
    rx: float  # half width
    ry: float  # half height
    angle: float = 0.0  # degrees, clockwise in the image
    pivot: tuple[float, float] | None = None  # a swinging part turns about this point
    swing: float = 0.0  # swing amplitude, degrees
    spin: float = 0.0  # a spinning part (wheel) turns about its centre, rad / frame in videos
    front: bool = False  # moving parts are drawn behind the body unless front


def _legs(xs, top, length, width=0.07, swing=20.0):
    return [Part("box", x, top + length, width, length, pivot=(x, top), swing=swing) for x in xs]


def _wheels(xs, y, r, spin=0.15):
    return [Part("ellipse", x, y, r, r, spin=spin, front=True) for x in xs]


CLASS_PARTS: tuple[tuple[Part, ...], ...] = tuple(tuple(parts) for parts in (
    # aeroplane: fuselage, swept wing, tail fin
    [Part("box", 0, 0, 1.0, 0.12), Part("tri", 0.05, 0, 0.25, 0.95, angle=-90), Part("box", -0.88, -0.2, 0.08, 0.3)],
    # bicycle: two wheels, frame, saddle, handlebar
    [Part("box", 0, 0, 0.6, 0.06, angle=-25), Part("box", -0.1, -0.38, 0.22, 0.06), Part("box", 0.5, -0.3, 0.06, 0.32),
     *_wheels((-0.62, 0.62), 0.35, 0.36)],
    # bird: body, head, beak, flapping wing
    [Part("ellipse", 0, 0, 0.55, 0.28), Part("ellipse", 0.6, -0.25, 0.2, 0.2), Part("tri", 0.85, -0.25, 0.07, 0.15, angle=90),
     Part("tri", -0.05, -0.5, 0.35, 0.4, pivot=(0.0, -0.15), swing=35, front=True)],
    # boat: hull, mast, sail
    [Part("box", 0, 0.55, 0.95, 0.18), Part("tri", 0, 0.55, 0.95, 0.18, angle=180), Part("box", 0, -0.2, 0.04, 0.75),
     Part("tri", 0.3, -0.15, 0.32, 0.6)],
    # bottle: body, shoulder, neck
    [Part("box", 0, 0.25, 0.32, 0.7), Part("ellipse", 0, -0.42, 0.32, 0.14), Part("box", 0, -0.75, 0.12, 0.3)],
    # bus: tall long box, two wheels
    [Part("box", 0, -0.05, 1.0, 0.5), *_wheels((-0.6, 0.6), 0.5, 0.17)],
    # car: body, cabin, two wheels
    [Part("box", 0, 0.15, 0.95, 0.26), Part("box", -0.05, -0.28, 0.5, 0.2), *_wheels((-0.55, 0.55), 0.43, 0.21)],
    # cat: body, head, ears, swishing tail
    [Part("ellipse", 0, 0.15, 0.55, 0.3), Part("ellipse", 0.6, -0.3, 0.24, 0.22), Part("tri", 0.45, -0.6, 0.1, 0.14),
     Part("tri", 0.75, -0.6, 0.1, 0.14), *_legs((-0.35, 0.35), 0.3, 0.25, 0.06, 15),
     Part("box", -0.75, -0.3, 0.05, 0.42, angle=-30, pivot=(-0.5, 0.05), swing=30)],
    # chair: seat, back, two legs
    [Part("box", 0, 0.1, 0.5, 0.08), Part("box", -0.44, -0.45, 0.07, 0.55), Part("box", -0.42, 0.6, 0.05, 0.45),
     Part("box", 0.42, 0.6, 0.05, 0.45)],
    # cow: boxy body, head, four walking legs
    [Part("box", 0, -0.1, 0.75, 0.33), Part("box", 0.85, -0.35, 0.22, 0.17),
     *_legs((-0.6, -0.4, 0.4, 0.6), 0.15, 0.3, 0.08, 15)],
    # diningtable: wide top, two legs
    [Part("box", 0, -0.35, 1.0, 0.08), Part("box", -0.8, 0.3, 0.06, 0.6), Part("box", 0.8, 0.3, 0.06, 0.6)],
    # dog: body, head, snout, running legs, wagging tail
    [Part("ellipse", 0, 0, 0.6, 0.24), Part("ellipse", 0.7, -0.3, 0.22, 0.18), Part("box", 0.95, -0.25, 0.12, 0.07),
     *_legs((-0.45, -0.3, 0.3, 0.45), 0.1, 0.3, 0.06, 30),
     Part("box", -0.72, -0.25, 0.05, 0.25, angle=45, pivot=(-0.55, -0.05), swing=35)],
    # horse: long body, neck, head, long galloping legs
    [Part("ellipse", 0, -0.15, 0.7, 0.26), Part("box", 0.62, -0.55, 0.1, 0.35, angle=30),
     Part("ellipse", 0.82, -0.85, 0.24, 0.11, angle=30), *_legs((-0.5, -0.35, 0.35, 0.5), 0.0, 0.5, 0.06, 25)],
    # motorbike: two wheels, body, handlebar
    [Part("tri", 0, -0.05, 0.55, 0.3, angle=180), Part("box", 0.5, -0.45, 0.05, 0.25, angle=20),
     Part("box", -0.3, -0.3, 0.3, 0.07), *_wheels((-0.6, 0.6), 0.4, 0.32)],
    # person: head, torso, swinging arms and legs
    [Part("ellipse", 0, -0.82, 0.17, 0.2), Part("box", 0, -0.2, 0.25, 0.42),
     Part("box", -0.33, -0.25, 0.07, 0.35, pivot=(-0.3, -0.55), swing=40, front=True),
     Part("box", 0.33, -0.25, 0.07, 0.35, pivot=(0.3, -0.55), swing=40, front=True),
     *_legs((-0.13, 0.13), 0.2, 0.45, 0.09, 30)],
    # pottedplant: pot, three swaying leaves
    [Part("tri", 0, 0.7, 0.35, 0.3, angle=180), Part("ellipse", 0, -0.25, 0.15, 0.55),
     Part("ellipse", -0.4, -0.05, 0.12, 0.45, angle=-35, pivot=(0, 0.35), swing=10),
     Part("ellipse", 0.4, -0.05, 0.12, 0.45, angle=35, pivot=(0, 0.35), swing=10)],
    # sheep: round woolly body, small head, short legs
    [Part("ellipse", 0, -0.05, 0.7, 0.45), Part("ellipse", 0.72, -0.3, 0.16, 0.2),
     *_legs((-0.4, -0.2, 0.2, 0.4), 0.3, 0.22, 0.06, 15)],
    # sofa: seat, back, two arms
    [Part("box", 0, 0.3, 0.95, 0.25), Part("box", 0, -0.3, 0.7, 0.35), Part("box", -0.85, 0.1, 0.15, 0.3),
     Part("box", 0.85, 0.1, 0.15, 0.3)],
    # train: long carriage, cab, chimney, four wheels
    [Part("box", 0, 0, 1.0, 0.32), Part("box", -0.6, -0.48, 0.3, 0.18), Part("box", 0.6, -0.5, 0.1, 0.2),
     *_wheels((-0.7, -0.25, 0.25, 0.7), 0.42, 0.15)],
    # tvmonitor: screen, stand, base
    [Part("box", 0, -0.15, 0.85, 0.6), Part("box", 0, 0.6, 0.07, 0.18), Part("box", 0, 0.82, 0.4, 0.06)],
))
