"""geod: fills the holes an app's IP geolocation cache leaves behind."""

__version__ = "0.1.0"
