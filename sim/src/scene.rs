//! Render-free geometry of a task's state, for plots and the rerun viewer.

/// What a shape represents (lets a viewer colour it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShapeKind {
    Robot,
    Object,
    Goal,
    Obstacle,
    Wall,
}

/// A 2-D primitive in world coordinates (metres).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Shape {
    Circle {
        x: f32,
        y: f32,
        r: f32,
    },
    /// A thick line segment (a robot link).
    Segment {
        x0: f32,
        y0: f32,
        x1: f32,
        y1: f32,
        width: f32,
    },
    /// Axis-aligned rectangle given by its min and max corners.
    Rect {
        x0: f32,
        y0: f32,
        x1: f32,
        y1: f32,
    },
}

/// A list of labelled shapes; cleared and refilled by [`crate::Env::scene`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scene {
    pub shapes: Vec<(ShapeKind, Shape)>,
}

impl Scene {
    pub fn clear(&mut self) {
        self.shapes.clear();
    }
    pub fn push(&mut self, kind: ShapeKind, shape: Shape) {
        self.shapes.push((kind, shape));
    }
}
