"""mdmflow: durable Apple MDM workflows on Temporal."""

__version__ = "0.4.0"
