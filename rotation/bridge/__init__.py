"""The bridge: KubeDB's MSSQLServerOpsRequest of type RotateAuth, carried out by Prefect runs.

``python -m rotation.bridge`` watches the requests it may take, starts one ``rotate-mssql-auth`` flow run
per request attempt through the Prefect API (idempotency key: the request's UID), and keeps the
request's status as KubeDB writes it. Decisions: rotation/ops_request.py (pure); I/O: cluster.py
(Kubernetes) and runs.py (Prefect); the loop: controller.py.
"""
