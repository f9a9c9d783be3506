"""Imports every built-in sensor library so each registers itself."""
