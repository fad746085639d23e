"""The `daemon` component (daemon.py) and the file work its requests do: the config file (config_file.py), support
bundles (bundle.py) and storage cleanup (cleanup.py)."""

from __future__ import annotations

from .bundle import (
    BUNDLE_DIR,
    BUNDLE_FILES,
    BUNDLE_KEEP,
    BUNDLE_PREFIX,
    build_bundle,
    read_journal,
    scrub,
    secret_values,
    versions,
)
from .cleanup import CLEANUP_FOLDERS, CLEANUP_KEEP, CleanupTarget, clean_storage, empty_folder
from .config_file import (
    PREV_SUFFIX,
    config_target,
    deep_merge,
    dump_config_document,
    prev_path,
    read_config_document,
    rollback_config_file,
    set_config_file,
    write_atomic,
)
from .daemon import (
    EX_TEMPFAIL,
    RESTART_GRACE_S,
    STATE_FILE,
    ActionKind,
    AppAction,
    CleanupArgs,
    ConfigApplied,
    ConfigSetArgs,
    DaemonControl,
    RestartArgs,
    core_requests,
)

__all__ = [
    "BUNDLE_DIR", "BUNDLE_FILES", "BUNDLE_KEEP", "BUNDLE_PREFIX", "CLEANUP_FOLDERS", "CLEANUP_KEEP", "EX_TEMPFAIL",
    "PREV_SUFFIX", "RESTART_GRACE_S", "STATE_FILE", "ActionKind", "AppAction", "CleanupArgs", "CleanupTarget",
    "ConfigApplied", "ConfigSetArgs", "DaemonControl", "RestartArgs", "build_bundle", "clean_storage",
    "config_target", "core_requests", "deep_merge", "dump_config_document", "empty_folder", "prev_path",
    "read_config_document", "read_journal", "rollback_config_file", "scrub", "secret_values", "set_config_file",
    "versions", "write_atomic",
]
