"""Scene layout in metres (REFERENCE §4): ground → soil → road grid + sidewalks → buildings → paved areas → cars
→ clutter → tree crowns, painted onto a :class:`Canvas`.

Three styles: ``village`` (Vaihingen-like: small gable-roofed, mostly red houses along a loose street grid),
``city`` (Potsdam-like: long flat grey blocks along wide streets, courtyards, parking lots, street trees) and
``suburb`` (the held-out town: detached houses set back in large gardens, dark slate and light roofs, hipped or
flat, few street trees).
Objects are added until each class reaches its (jittered) target share, which keeps class shares near ISPRS's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.core.classes import SEG_CLASSES
from engine.synth.canvas import Canvas, Footprint, Layer
from engine.synth.materials import CAR_PAINT_P, CAR_PAINTS, M

IMP, BLD, LOW, TREE, CAR, CLU = range(len(SEG_CLASSES))
MAX_CAR_SHARE = 0.024
ROAD_PIECE_M = 20.0


@dataclass(frozen=True)
class Style:
    """Layout parameters of one domain style (sizes in metres)."""

    block: tuple[float, float]
    asphalt: tuple[float, float]
    sidewalk: tuple[float, float]
    sidewalk_p: float
    segment_p: float
    frontage: tuple[float, float]
    depth: tuple[float, float]
    setback: tuple[float, float]
    gap: tuple[float, float]
    eave: tuple[float, float]
    roofs: tuple[tuple[M, float, float], ...]  # (material, probability, probability of a gable roof)
    building_margin: float
    fill_size: tuple[float, float]
    crown: tuple[float, float]
    tree_top: tuple[float, float]
    street_tree_p: float
    car_gap: float
    parked_p: float
    parking_lot_p: float
    targets: dict[int, float]
    elevation: tuple[float, float]
    meadow: int
    soil_size: tuple[float, float]


STYLES: dict[str, Style] = {
    "village": Style(
        block=(55.0, 95.0),
        asphalt=(4.8, 6.8),
        sidewalk=(1.4, 2.2),
        sidewalk_p=0.6,
        segment_p=0.7,
        frontage=(9.0, 15.0),
        depth=(8.5, 14.0),
        setback=(2.5, 7.0),
        gap=(2.5, 8.0),
        eave=(3.5, 6.5),
        roofs=((M.ROOF_RED, 0.62, 0.9), (M.ROOF_GREY, 0.16, 0.3), (M.ROOF_DARK, 0.14, 0.4), (M.ROOF_LIGHT, 0.08, 0.0)),
        building_margin=1.0,
        fill_size=(10.0, 26.0),
        crown=(1.6, 4.6),
        tree_top=(5.0, 14.0),
        street_tree_p=0.25,
        car_gap=32.0,
        parked_p=0.5,
        parking_lot_p=0.25,
        targets={BLD: 0.29, TREE: 0.19, IMP: 0.33, CLU: 0.04},
        elevation=(38.0, 58.0),
        meadow=6,
        soil_size=(4.0, 16.0),
    ),
    "city": Style(
        block=(90.0, 150.0),
        asphalt=(6.5, 9.5),
        sidewalk=(2.0, 3.5),
        sidewalk_p=1.0,
        segment_p=0.9,
        frontage=(14.0, 42.0),
        depth=(10.0, 16.0),
        setback=(0.0, 3.0),
        gap=(0.0, 12.0),
        eave=(8.0, 17.0),
        roofs=((M.ROOF_GREY, 0.42, 0.0), (M.ROOF_DARK, 0.2, 0.0), (M.ROOF_LIGHT, 0.16, 0.0), (M.ROOF_RED, 0.22, 0.8)),
        building_margin=0.0,
        fill_size=(18.0, 45.0),
        crown=(2.2, 6.0),
        tree_top=(7.0, 18.0),
        street_tree_p=0.7,
        car_gap=22.0,
        parked_p=0.65,
        parking_lot_p=0.5,
        targets={BLD: 0.26, TREE: 0.17, IMP: 0.33, CLU: 0.05},
        elevation=(35.0, 55.0),
        meadow=3,
        soil_size=(6.0, 22.0),
    ),
    "suburb": Style(
        block=(70.0, 120.0),
        asphalt=(5.5, 7.5),
        sidewalk=(1.2, 2.0),
        sidewalk_p=0.4,
        segment_p=0.8,
        frontage=(11.0, 18.0),
        depth=(10.0, 15.0),
        setback=(6.0, 12.0),
        gap=(6.0, 14.0),
        eave=(3.0, 7.0),
        roofs=((M.ROOF_DARK, 0.45, 0.6), (M.ROOF_LIGHT, 0.25, 0.1), (M.ROOF_GREY, 0.2, 0.5), (M.ROOF_RED, 0.1, 0.9)),
        building_margin=1.5,
        fill_size=(12.0, 24.0),
        crown=(2.0, 5.0),
        tree_top=(6.0, 15.0),
        street_tree_p=0.15,
        car_gap=28.0,
        parked_p=0.55,
        parking_lot_p=0.15,
        targets={BLD: 0.22, TREE: 0.14, IMP: 0.28, CLU: 0.04},
        elevation=(22.0, 38.0),  # autumn: a lower sun, longer shadows
        meadow=8,
        soil_size=(5.0, 14.0),
    ),
}


@dataclass(frozen=True)
class Sun:
    azimuth_deg: float
    elevation_deg: float

    def towards(self) -> tuple[float, float, float]:
        """Unit vector towards the sun in image coordinates (x right, y down, z up)."""
        az, el = math.radians(self.azimuth_deg), math.radians(self.elevation_deg)
        return math.sin(az) * math.cos(el), -math.cos(az) * math.cos(el), math.sin(el)


@dataclass(frozen=True)
class Road:
    """A straight road in the layout frame: along v at u=pos (axis 0) or along u at v=pos (axis 1)."""

    axis: int
    pos: float
    start: float
    end: float
    asphalt: float
    sidewalk: float

    @property
    def edge(self) -> float:
        return 0.5 * self.asphalt + self.sidewalk


class Scene:
    """Lays one tile out on a canvas; ``rng`` decides everything, so a seed fixes the scene."""

    def __init__(self, canvas: Canvas, style: Style, rng: np.random.Generator) -> None:
        self.cv, self.st, self.rng = canvas, style, rng
        w, h = canvas.size_m
        self.cx, self.cy = 0.5 * w, 0.5 * h
        self.theta = float(rng.uniform(-math.pi, math.pi))
        self.radius = 0.5 * math.hypot(w, h) + 5.0
        self.sun = Sun(float(rng.uniform(125.0, 235.0)), float(rng.uniform(*style.elevation)))
        jitter = rng.uniform(0.85, 1.15, size=len(SEG_CLASSES))
        self.targets = {k: v * float(jitter[k]) for k, v in style.targets.items()}
        self.roads: list[Road] = []

    # -- geometry helpers -------------------------------------------------------------------------------------
    def to_img(self, u: float, v: float) -> tuple[float, float]:
        c, s = math.cos(self.theta), math.sin(self.theta)
        return self.cx + u * c - v * s, self.cy + u * s + v * c

    def frect(self, u: float, v: float, du: float, dv: float, turn: float = 0.0) -> Footprint | None:
        """Rectangle of extent ``du`` × ``dv`` centred at frame point (u, v), turned by ``turn`` radians."""
        x, y = self.to_img(u, v)
        return self.cv.rect(x, y, du, dv, self.theta + turn)

    def random_point(self) -> tuple[float, float]:
        w, h = self.cv.size_m
        return float(self.rng.uniform(0, w)), float(self.rng.uniform(0, h))

    def u(self, lo_hi: tuple[float, float]) -> float:
        return float(self.rng.uniform(*lo_hi))

    # -- layout steps ------------------------------------------------------------------------------------------
    def build(self) -> Sun:
        self.ground()
        self.soil()
        self.road_grid()
        self.buildings()
        self.paved_areas()
        self.cars_on_roads()
        self.clutter_objects()
        self.trees()
        return self.sun

    def ground(self) -> None:
        for _ in range(self.st.meadow):
            x, y = self.random_point()
            fp = self.cv.ellipse(x, y, self.u((8.0, 30.0)), self.u((6.0, 22.0)), self.u((0.0, math.pi)))
            if fp is not None:
                self.cv.paint(fp, M.MEADOW, Layer.GROUND, shade=self.u((0.9, 1.1)))

    def soil(self) -> None:
        target = self.targets[CLU] * 0.8
        for _ in range(40):
            if self.cv.share(CLU) >= target:
                break
            x, y = self.random_point()
            a, b = self.u(self.st.soil_size), self.u(self.st.soil_size)
            if self.rng.random() < 0.5:
                fp = self.cv.ellipse(x, y, 0.5 * a, 0.5 * b, self.u((0.0, math.pi)))
            else:
                fp = self.cv.rect(x, y, a, b, self.theta + self.u((-0.2, 0.2)))
            if fp is not None:
                self.cv.paint(fp, M.SOIL, Layer.SOIL, shade=self.u((0.85, 1.15)))

    def road_grid(self) -> None:
        st, r = self.st, self.radius
        lines: list[list[float]] = []
        for _ in range(2):
            pos, found = -r + self.u((0.1, 0.9)) * st.block[1], []
            while pos < r:
                found.append(pos)
                pos += self.u(st.block)
            lines.append(found)
        for axis in (0, 1):
            cross = [-r, *lines[1 - axis], r]
            for pos in lines[axis]:
                asphalt = self.u(st.asphalt)
                sidewalk = self.u(st.sidewalk) if self.rng.random() < st.sidewalk_p else 0.0
                full = axis == 0  # roads along v run through; cross roads may stop at junctions
                for a, b in zip(cross[:-1], cross[1:]):
                    if full or self.rng.random() < st.segment_p:
                        self.roads.append(Road(axis, pos, a, b, asphalt, sidewalk))
        self.roads = _merge_segments(self.roads)
        side_mat = M.PAVING_RED if self.rng.random() < 0.2 else M.PAVING
        for road in self.roads:  # all sidewalks first, so a crossing road's asphalt stays on top
            if road.sidewalk > 0:
                self._paint_road(road, 2 * road.edge, road.sidewalk, side_mat, self.u((0.92, 1.08)))
        for road in self.roads:
            self._paint_road(road, road.asphalt, 0.5 * road.asphalt, M.ASPHALT, self.u((0.9, 1.1)))

    def _paint_road(self, road: Road, width: float, extend: float, material: M, shade: float) -> None:
        """Paint a road band in short pieces: a long diagonal road's bounding box would be the whole tile."""
        start, end = road.start - extend, road.end + extend
        n = max(1, math.ceil((end - start) / ROAD_PIECE_M))
        step = (end - start) / n
        for i in range(n):
            mid = start + (i + 0.5) * step
            length = step + 0.1  # pieces overlap a little, so no pixel falls between two of them
            if road.axis == 0:
                fp = self.frect(road.pos, mid, width, length)
            else:
                fp = self.frect(mid, road.pos, length, width)
            if fp is not None:
                self.cv.paint(fp, material, Layer.ROAD, height=0.0, shade=shade)

    def _road_point(self, road: Road, along: float, across: float) -> tuple[float, float]:
        """Frame (u, v) at ``along`` the road and ``across`` from its centre line."""
        return (road.pos + across, along) if road.axis == 0 else (along, road.pos + across)

    def buildings(self) -> None:
        st = self.st
        slots: list[tuple[Road, float, float, float, float]] = []
        for road in self.roads:
            for side in (-1.0, 1.0):
                s = road.start + self.u((0.0, st.gap[1]))
                while s < road.end:
                    front, depth = self.u(st.frontage), self.u(st.depth)
                    slots.append((road, side, s + 0.5 * front, front, depth))
                    s += front + self.u(st.gap)
        order = self.rng.permutation(len(slots))
        target = self.targets[BLD]
        for i in order:
            if self.cv.share(BLD) >= target:
                return
            road, side, along, front, depth = slots[i]
            setback = self.u(st.setback)
            across = side * (road.edge + setback + 0.5 * depth)
            u, v = self._road_point(road, along, across)
            du, dv = (depth, front) if road.axis == 0 else (front, depth)
            if self.house(u, v, du, dv, self.u((-0.06, 0.06))):
                self.driveway(road, side, along, front, setback)
        c, s = math.cos(self.theta), math.sin(self.theta)
        for k in range(400):
            if self.cv.share(BLD) >= target:
                return
            x, y = self.random_point()
            u, v = (x - self.cx) * c + (y - self.cy) * s, (y - self.cy) * c - (x - self.cx) * s
            size = st.fill_size if k % 2 else st.frontage
            self.house(u, v, self.u(size), self.u(size), self.u((-0.05, 0.05)))

    def house(self, u: float, v: float, du: float, dv: float, turn: float) -> bool:
        """Place one building (rejected where it touches a road or another building); True if placed."""
        st, cv = self.st, self.cv
        if cv.layer_at(*self.to_img(u, v)) in (Layer.ROAD, Layer.BUILDING):
            return False
        margin = st.building_margin
        probe = self.frect(u, v, du + 2 * margin + 1.0, dv + 2 * margin + 1.0, turn)
        if probe is None or cv.touches(probe, (Layer.ROAD,)):
            return False
        inner = probe if margin > 0 else self.frect(u, v, max(du - 1.0, 0.5), max(dv - 1.0, 0.5), turn)
        if inner is not None and cv.touches(inner, (Layer.BUILDING,)):
            return False
        fp = self.frect(u, v, du, dv, turn)
        if fp is None:
            return False
        roof_i = self.rng.choice(len(st.roofs), p=[p for _, p, _ in st.roofs])
        material, _, gable_p = st.roofs[roof_i]
        eave = self.u(st.eave)
        tint = self.u((0.82, 1.15))
        angle = self.theta + turn
        if self.rng.random() < gable_p:
            long_u = du >= dv  # ridge along the long side
            half = 0.5 * (dv if long_u else du)
            rise = half * math.tan(math.radians(self.u((30.0, 45.0))))
            across = fp.v if long_u else fp.u
            height = eave + rise * (1.0 - np.abs(across) / np.float32(half))
            # facet normals lean along ±(across axis); lambert shading normalised to a flat roof
            ax = (-math.sin(angle), math.cos(angle)) if long_u else (math.cos(angle), math.sin(angle))
            sx, sy, sz = self.sun.towards()
            tilt = math.atan2(rise, half)
            lean = (ax[0] * sx + ax[1] * sy) * math.sin(tilt)
            lit = np.where(across > 0, lean, -lean) + math.cos(tilt) * sz
            shade = np.clip(lit / sz, 0.3, 1.6).astype(np.float32) * np.float32(tint)
            cv.paint(fp, material, Layer.BUILDING, height=height.astype(np.float32), shade=shade)
        else:
            cv.paint(fp, material, Layer.BUILDING, height=eave, shade=tint)
            self.roof_structures(u, v, du, dv, turn, eave)
        return True

    def roof_structures(self, u: float, v: float, du: float, dv: float, turn: float, eave: float) -> None:
        """Small boxes (vents, stair houses, AC units) on flat roofs: building class, but other colours."""
        n = int(self.rng.integers(0, 2 + int(du * dv / 120.0)))
        for _ in range(n):
            a, b = self.u((0.8, min(4.0, 0.4 * du))), self.u((0.8, min(4.0, 0.4 * dv)))
            pu = u + self.u((-0.5, 0.5)) * (du - a)
            pv = v + self.u((-0.5, 0.5)) * (dv - b)
            fp = self.frect(pu, pv, a, b, turn)
            if fp is not None:
                mat = M.ROOF_LIGHT if self.rng.random() < 0.5 else M.ROOF_DARK
                where = self.cv.layer[fp.window] == Layer.BUILDING
                self.cv.paint(fp, mat, Layer.BUILDING, height=eave + self.u((0.8, 2.5)), where=where)

    def driveway(self, road: Road, side: float, along: float, front: float, setback: float) -> None:
        if setback < 1.0 or self.rng.random() < 0.2:
            return
        width = self.u((2.8, 4.5))
        pos = along + self.u((-0.5, 0.5)) * (front - width)
        across = side * (road.edge + 0.5 * setback)
        u, v = self._road_point(road, pos, across)
        du, dv = (setback, width) if road.axis == 0 else (width, setback)
        fp = self.frect(u, v, du + 0.4, dv + 0.4)
        if fp is None:
            return
        mat = (M.PAVING, M.GRAVEL, M.PAVING_RED, M.ASPHALT)[int(self.rng.integers(0, 4))]
        free = self.cv.layer[fp.window] <= Layer.SOIL
        self.cv.paint(fp, mat, Layer.PAVED, height=0.0, shade=self.u((0.9, 1.1)), where=free)
        if self.rng.random() < 0.45:
            x, y = self.to_img(u, v)
            self.car(x, y, self.theta + (0.0 if road.axis == 0 else math.pi / 2), free_only=False)

    def paved_areas(self) -> None:
        """Yards, plazas and parking lots until impervious reaches its target share."""
        target = self.targets[IMP]
        for _ in range(120):
            if self.cv.share(IMP) >= target:
                return
            x, y = self.random_point()
            turn = self.u((-0.05, 0.05))
            if self.rng.random() < self.st.parking_lot_p:
                self.parking_lot(x, y, turn)
                continue
            fp = self.cv.rect(x, y, self.u((5.0, 22.0)), self.u((4.0, 14.0)), self.theta + turn)
            if fp is None:
                continue
            mat = (M.PAVING, M.GRAVEL, M.PAVING_RED, M.ASPHALT)[int(self.rng.integers(0, 4))]
            free = self.cv.layer[fp.window] == Layer.GROUND
            self.cv.paint(fp, mat, Layer.PAVED, height=0.0, shade=self.u((0.88, 1.12)), where=free)

    def parking_lot(self, x: float, y: float, turn: float) -> None:
        rows = int(self.rng.integers(1, 4))
        length, depth = self.u((14.0, 40.0)), rows * 11.0
        angle = self.theta + turn
        fp = self.cv.rect(x, y, length, depth, angle)
        if fp is None or self.cv.touches(fp, (Layer.BUILDING, Layer.ROAD, Layer.PAVED)):
            return
        free = self.cv.layer[fp.window] <= Layer.SOIL
        self.cv.paint(fp, M.ASPHALT, Layer.PAVED, height=0.0, shade=self.u((0.9, 1.1)), where=free)
        c, s = math.cos(angle), math.sin(angle)
        fill = self.u((0.3, 0.9))
        for r in range(rows):
            off = -0.5 * depth + 11.0 * r + 5.5
            for k in range(int(length / 2.6)):
                if self.rng.random() > fill or self.cv.share(CAR) > MAX_CAR_SHARE:
                    continue
                along = -0.5 * length + 1.3 + 2.6 * k
                for side in (-2.8, 2.8):
                    cx = x + along * c - (off + side) * s
                    cy = y + along * s + (off + side) * c
                    self.car(cx, cy, angle + math.pi / 2 + (math.pi if side > 0 else 0.0), free_only=False)

    def car(self, x: float, y: float, angle: float, free_only: bool = True) -> bool:
        """One car: painted body, dark windows, body-coloured roof; rejected where it would overlap a car."""
        length, width = self.u((4.2, 4.9)), self.u((1.7, 1.9))
        angle += self.u((-0.04, 0.04))
        fp = self.cv.rect(x, y, length, width, angle)
        if fp is None or self.cv.touches(fp, (Layer.CAR, Layer.BUILDING)):
            return False
        if free_only and not self.cv.touches(fp, (Layer.ROAD, Layer.PAVED)):
            return False
        paint = CAR_PAINTS[int(self.rng.choice(len(CAR_PAINTS), p=CAR_PAINT_P))]
        tint = self.u((0.85, 1.12))
        cv = self.cv
        cv.paint(fp, paint, Layer.CAR, height=1.45, shade=tint)
        u, v = fp.u, fp.v
        glass = (np.abs(v) <= 0.42 * width) & (u > -0.32 * length) & (u < 0.22 * length)
        roof = (np.abs(v) <= 0.36 * width) & (u > -0.2 * length) & (u < 0.05 * length)
        cv.paint(fp, M.CAR_GLASS, Layer.CAR, shade=1.0, where=glass & ~roof)
        return True

    def cars_on_roads(self) -> None:
        st = self.st
        for road in self.roads:
            lanes = [-0.25 * road.asphalt, 0.25 * road.asphalt]
            parked = [-(0.5 * road.asphalt - 1.05), 0.5 * road.asphalt - 1.05]
            for offset in lanes + [p for p in parked if self.rng.random() < st.parked_p]:
                is_parked = offset in parked
                gap = st.car_gap * (0.35 if is_parked else 1.0)
                s = road.start + self.rng.exponential(gap)
                while s < road.end:
                    if self.cv.share(CAR) > MAX_CAR_SHARE:
                        return
                    u, v = self._road_point(road, s, offset)
                    x, y = self.to_img(u, v)
                    heading = math.pi / 2 if road.axis == 0 else 0.0
                    self.car(x, y, self.theta + heading + (math.pi if offset < 0 else 0.0))
                    s += 5.2 + self.rng.exponential(gap)

    def clutter_objects(self) -> None:
        target = self.targets[CLU]
        for _ in range(60):
            if self.cv.share(CLU) >= target:
                return
            x, y = self.random_point()
            fp = self.cv.rect(x, y, self.u((1.0, 4.0)), self.u((0.8, 2.5)), self.theta + self.u((-0.3, 0.3)))
            if fp is None or self.cv.touches(fp, (Layer.ROAD, Layer.BUILDING, Layer.CAR)):
                continue
            mat = M.CLUTTER_BLUE if self.rng.random() < 0.35 else M.CLUTTER_WOOD
            self.cv.paint(fp, mat, Layer.CLUTTER, height=self.u((0.8, 2.5)), shade=self.u((0.8, 1.2)))

    def trees(self) -> None:
        st = self.st
        target = self.targets[TREE]
        if self.rng.random() < st.street_tree_p:
            for road in self.roads:
                if road.sidewalk <= 0 or self.rng.random() < 0.4:
                    continue
                spacing = self.u((7.0, 12.0))
                side = 1.0 if self.rng.random() < 0.5 else -1.0
                s = road.start + self.u((0.0, spacing))
                while s < road.end and self.cv.share(TREE) < target:
                    u, v = self._road_point(road, s, side * (0.5 * road.asphalt + 0.5 * road.sidewalk))
                    self.tree(*self.to_img(u, v), radius=self.u(st.crown) * 0.9)
                    s += spacing
        for _ in range(400):
            if self.cv.share(TREE) >= target:
                return
            x0, y0 = self.random_point()
            for _ in range(int(self.rng.integers(1, 7))):
                x, y = x0 + self.rng.normal(0, 5.0), y0 + self.rng.normal(0, 5.0)
                if self.cv.layer_at(x, y) not in (Layer.GROUND, Layer.SOIL, Layer.TREE):
                    continue
                self.tree(x, y, self.u(st.crown))

    def tree(self, x: float, y: float, radius: float) -> None:
        """A lobed dome crown, lit from the sun's side; it covers only what is lower than the crown surface."""
        fp = self.cv.ellipse(x, y, 1.25 * radius, 1.25 * radius)
        if fp is None:
            return
        u, v = fp.u * np.float32(1.25), fp.v * np.float32(1.25)
        rho = np.sqrt(u * u + v * v)
        phi = np.arctan2(v, u)
        p1, p2 = self.u((0.0, 2 * math.pi)), self.u((0.0, 2 * math.pi))
        edge = 1.0 + 0.13 * np.sin(3 * phi + p1) + 0.08 * np.sin(5 * phi + p2)
        inside = rho < edge
        r = np.minimum(rho / edge, 1.0)
        nz = np.sqrt(1.0 - r * r)
        top = self.u(self.st.tree_top)
        crown_h = min(top - 1.5, radius * self.u((0.8, 1.4)))
        height = (top - crown_h + crown_h * nz).astype(np.float32)
        sx, sy, sz = self.sun.towards()
        lambert = np.clip((u / edge) * sx + (v / edge) * sy + nz * sz, 0.0, None)
        shade = ((0.5 + 0.75 * lambert) * self.u((0.82, 1.12))).astype(np.float32)
        higher = height > self.cv.height[fp.window]
        fp = Footprint(fp.rows, fp.cols, inside, fp.u, fp.v)
        self.cv.paint(fp, M.TREE, Layer.TREE, height=height, shade=shade, where=higher)


def _merge_segments(roads: list[Road]) -> list[Road]:
    """Join consecutive segments of the same road so it is rasterised (and walked) once per run."""
    merged: list[Road] = []
    for road in roads:
        last = merged[-1] if merged else None
        if last is not None and last.axis == road.axis and last.pos == road.pos and last.end == road.start:
            merged[-1] = Road(road.axis, road.pos, last.start, road.end, road.asphalt, road.sidewalk)
        else:
            merged.append(road)
    return merged


def layout_scene(canvas: Canvas, style: str, rng: np.random.Generator) -> Sun:
    """Paint a whole scene of ``style`` onto ``canvas``; returns the sun used (for shadows)."""
    return Scene(canvas, STYLES[style], rng).build()
