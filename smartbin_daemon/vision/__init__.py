"""Camera capture, YOLO detection, decisions and evidence."""
