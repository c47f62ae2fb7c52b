"""Model management, one service for the admin routes, Ollama's routes and the CLI: where a
model may come from (sources), the models folder's files (files), and the operations (service).
"""

from daemon.models.files import check_name, main_file, model_files, origin, remove, served_name
from daemon.models.service import (
    PullPlan,
    copy,
    delete,
    known_name,
    plan_pull,
    pull,
    run_pull,
    unload,
)
from daemon.models.sources import (
    DEFAULT_TYPE,
    IMPORT_PREFIX,
    REPO_ERROR,
    HubSource,
    LocalSource,
    Source,
    parse_local_user,
    parse_source,
)

__all__ = [
    "DEFAULT_TYPE",
    "IMPORT_PREFIX",
    "REPO_ERROR",
    "HubSource",
    "LocalSource",
    "PullPlan",
    "Source",
    "check_name",
    "copy",
    "delete",
    "known_name",
    "main_file",
    "model_files",
    "origin",
    "parse_local_user",
    "parse_source",
    "plan_pull",
    "pull",
    "remove",
    "run_pull",
    "served_name",
    "unload",
]
