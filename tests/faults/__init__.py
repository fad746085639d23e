"""Fault-injection tests: broker, serial link, camera, crash, storage and clock faults."""
