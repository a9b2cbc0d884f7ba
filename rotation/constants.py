"""Names KubeDB gives to labels, annotations, secret keys and conditions, in one place."""

from __future__ import annotations

from typing import Final

# The MSSQLServer custom resource.
DB_GROUP: Final = "kubedb.com"
DB_VERSION: Final = "v1alpha2"
DB_PLURAL: Final = "mssqlservers"
DB_KIND: Final = "MSSQLServer"
PETSET_GROUP: Final = "apps.k8s.appscode.com"
PETSET_VERSION: Final = "v1"
PETSET_PLURAL: Final = "petsets"

# Pod labels KubeDB sets on a database's pods.
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_ROLE: Final = "kubedb.com/role"
ROLE_PRIMARY: Final = "primary"
ROLE_SECONDARY: Final = "secondary"
MSSQL_RESOURCE_NAME: Final = "mssqlservers.kubedb.com"

# The auth secret and its keys.
SECRET_TYPE_BASIC_AUTH: Final = "kubernetes.io/basic-auth"
KEY_USERNAME: Final = "username"
KEY_PASSWORD: Final = "password"
KEY_USERNAME_NEXT: Final = "username.next"
KEY_PASSWORD_NEXT: Final = "password.next"
KEY_USERNAME_PREV: Final = "username.prev"
KEY_PASSWORD_PREV: Final = "password.prev"
ANNOTATION_ACTIVE_FROM: Final = "kubedb.com/auth-active-from"
# Ours: set when the new credentials are committed and the pods still run with the old ones;
# removed after the last restart. A re-run that finds it finishes the restarts instead of rotating again.
ANNOTATION_RESTART_PENDING: Final = "mssql-auth-rotation.kubedb.com/restart-pending"

# Ours: the Prefect flow run (or local run) that committed the current credentials. Lets a re-run
# tell "the interrupted run had finished, it only missed resuming" from "it had not started".
ANNOTATION_ROTATED_BY: Final = "mssql-auth-rotation.kubedb.com/rotated-by"

# Status condition that makes KubeDB's provisioner leave the database alone.
CONDITION_PAUSED: Final = "Paused"
PAUSE_REASON: Final = "Paused"
PAUSE_MESSAGE_PREFIX: Final = "Paused by mssql-auth-rotation for RotateAuth"

# The mssql container's variable that carries the sa password.
SA_PASSWORD_ENV: Final = "MSSQL_SA_PASSWORD"

FIELD_MANAGER: Final = "mssql-auth-rotation"
EVENT_SOURCE: Final = "mssql-auth-rotation"
DEFAULT_SQL_PORT: Final = 1433
SQL_PORT_ENV: Final = "MSSQL_AUTH_ROTATION_SQL_PORT"
