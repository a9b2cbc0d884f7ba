"""Install the failure notifications on a Prefect server: ``python -m rotation notifications``.

Resolves the notification block (``<block-type-slug>/<block-name>``) to its id, puts that id into every
``send-notification`` action of ``deployments/automations/notify-failures.yaml`` and creates or updates
each automation by its name, so running it again changes nothing (or brings the server's automations
back to the file). The file is the truth: an automation switched off in the UI is switched on again by
the next install; set ``enabled: false`` in the file instead. A name found twice keeps one automation.

The block is read without its secret fields (a webhook URL may hold a token): only its id and type
are needed. Nothing here prints more than names and ids.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient
from prefect.events.schemas.automations import AutomationCore
from prefect.exceptions import ObjectNotFound
from pydantic import ValidationError

from rotation.notifications import (
    BlockRef,
    NotificationSetupError,
    missing_block,
    not_a_notification_block,
    with_block,
)

NOTIFY: Literal["notify"] = "notify"  # the capability of Prefect's notification blocks


@dataclass(frozen=True)
class Installed:
    name: str
    id: UUID
    how: Literal["created", "updated"]
    duplicates_removed: int = 0

    def __str__(self) -> str:
        removed = self.duplicates_removed
        extra = f" ({removed} duplicate(s) of that name removed)" if removed else ""
        return f"{self.how} automation {self.name!r} ({self.id}){extra}"


def resolve_block(client: SyncPrefectClient, block: BlockRef) -> UUID:
    """The block document's id; NotificationSetupError saying what to do when it cannot notify."""
    try:
        document = client.read_block_document_by_name(block.name, block.type_slug, include_secrets=False)
    except ObjectNotFound:
        raise NotificationSetupError(
            missing_block(block, server_address(client), notification_types(client))
        ) from None
    capabilities = list(document.block_schema.capabilities) if document.block_schema is not None else []
    if NOTIFY not in capabilities:
        raise NotificationSetupError(not_a_notification_block(block, capabilities))
    return document.id


def server_address(client: SyncPrefectClient) -> str:
    """The API's URL for messages, without any user:password it may carry."""
    url = urllib.parse.urlsplit(str(client.api_url))
    host = url.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((url.scheme, host, url.path, "", ""))


def notification_types(client: SyncPrefectClient) -> list[str]:
    """The slugs of the server's block types that can notify."""
    return sorted(
        {
            schema.block_type.slug
            for schema in client.read_block_schemas()
            if NOTIFY in schema.capabilities and schema.block_type is not None
        }
    )


def validated(automations: list[dict[str, Any]], block_id: UUID, source: str) -> list[AutomationCore]:
    """Prefect's own model of each automation, its notifications going through the block."""
    result = []
    for automation in with_block(automations, str(block_id)):
        try:
            result.append(AutomationCore.model_validate(automation))
        except ValidationError as exc:
            raise NotificationSetupError(
                f"{source}: automation {automation['name']!r} is not one Prefect accepts: {exc}"
            ) from None
    return result


def install(client: SyncPrefectClient, automations: list[AutomationCore]) -> list[Installed]:
    """Create each automation, or update the one of its name (removing any others of that name)."""
    done = []
    for automation in automations:
        existing = client.read_automations_by_name(automation.name)  # exact name, newest first
        if not existing:
            done.append(Installed(automation.name, client.create_automation(automation), "created"))
            continue
        keep, *extra = existing
        client.update_automation(keep.id, automation)
        for duplicate in extra:
            client.delete_automation(duplicate.id)
        done.append(Installed(automation.name, keep.id, "updated", len(extra)))
    return done
