"""Imports every built-in sensor library so each registers itself."""

from sensors import bmp280, co2, ds18b20, ec, flow, light, moisture, ph, sht31

BUILTIN = (ph, ec, moisture, ds18b20, sht31, bmp280, co2, light, flow)
