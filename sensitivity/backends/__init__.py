"""Reference implementations selectable as estimator backends."""
