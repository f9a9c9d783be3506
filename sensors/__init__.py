"""Sensor libraries: raw ESP32 values -> physical values with unit and quality."""
