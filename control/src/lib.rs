//! Statiko control plane.
