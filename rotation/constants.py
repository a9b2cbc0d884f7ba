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
PETSET_KIND: Final = "PetSet"
OPS_GROUP: Final = "ops.kubedb.com"
OPS_VERSION: Final = "v1alpha1"
OPS_PLURAL: Final = "mssqlserveropsrequests"
# Phases of an MSSQLServerOpsRequest that mean KubeDB's ops-manager runs it now or is about to:
# a rotation at the same time would race it (the ops-manager serialises requests per database).
# No status yet counts as Pending.
OPS_ACTIVE_PHASES: Final = frozenset({"", "Pending", "Progressing", "Approved"})

# Pod labels KubeDB sets on a database's pods.
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_ROLE: Final = "kubedb.com/role"
ROLE_PRIMARY: Final = "primary"
ROLE_SECONDARY: Final = "secondary"
MSSQL_RESOURCE_NAME: Final = "mssqlservers.kubedb.com"

# The auth secret and its keys.
SECRET_TYPE_BASIC_AUTH: Final = "kubernetes.io/basic-auth"
SECRET_TYPE_OPAQUE: Final = "Opaque"  # KubeDB accepts user secrets of either type
# spec.authSecret.apiGroup of a secret served by KubeDB's virtual-secrets (e.g. backed by a vault).
VIRTUAL_SECRETS_GROUP: Final = "virtual-secrets.dev"
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
# Ours, with the mark above: the UIDs of the pods that were running when the credentials were
# committed. A pod with another UID started afterwards, with the new credentials: a recovery run
# does not restart it again.
ANNOTATION_RESTART_PODS: Final = "mssql-auth-rotation.kubedb.com/restart-pods"

# Ours: the Prefect flow run (or local run) that committed the current credentials. Lets a re-run
# tell "the interrupted run had finished, it only missed resuming" from "it had not started".
ANNOTATION_ROTATED_BY: Final = "mssql-auth-rotation.kubedb.com/rotated-by"

# Status condition that makes KubeDB's provisioner leave the database alone.
CONDITION_PAUSED: Final = "Paused"
PAUSE_REASON: Final = "Paused"
# KubeDB's handshake: the pauser writes Unknown, the provisioner acknowledges with True once it has
# stopped reconciling the database.
PAUSE_REQUESTED: Final = "Unknown"
PAUSE_ACKNOWLEDGED: Final = "True"
PAUSE_MESSAGE_PREFIX: Final = "Paused by mssql-auth-rotation for RotateAuth"

# The mssql container's variable that carries the sa password, and its SQL port.
SA_PASSWORD_ENV: Final = "MSSQL_SA_PASSWORD"
MSSQL_CONTAINER: Final = "mssql"
SQL_PORT_NAME: Final = "db"

FIELD_MANAGER: Final = "mssql-auth-rotation"
EVENT_SOURCE: Final = "mssql-auth-rotation"
DEFAULT_SQL_PORT: Final = 1433
