"""SmartBin daemon: runs a smart waste bin and speaks MQTT."""

__version__ = "0.1.0"
