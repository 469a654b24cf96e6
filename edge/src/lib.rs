//! Statiko edge.
