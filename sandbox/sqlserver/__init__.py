"""An emulated Microsoft SQL Server instance speaking TDS 7.4, for pymssql-based tests.

InstanceState holds what survives restarts (logins, AG role, fault switches); TdsServer serves it
over TCP. See protocol.py (wire format) and engine.py (the T-SQL subset) for the boundaries.
"""

from sandbox.sqlserver.server import TdsServer
from sandbox.sqlserver.state import Faults, InstanceState

__all__ = ["Faults", "InstanceState", "TdsServer"]
