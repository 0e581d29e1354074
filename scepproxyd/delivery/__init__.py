"""Delivery backends: hand rendered profiles to the systems that put them on devices."""
