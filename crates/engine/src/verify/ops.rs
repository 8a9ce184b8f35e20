//! Placeholder: the primitive-op checks (being written).
