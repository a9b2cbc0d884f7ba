"""Who is told when a rotation fails: the notification block setting and the automations' file.

The automations live in ``deployments/automations/notify-failures.yaml``, in the shape of Prefect's
``AutomationCore`` (``prefect automation create --from-file`` reads the same shape), with one blank:
the ``block_document_id`` of every ``send-notification`` action, which names the Prefect notification
block that carries the message (Slack, Teams, PagerDuty, e-mail, a webhook). The operator names that
block by ``<block-type-slug>/<block-name>`` (``prefect block ls`` lists them so), with
``python -m rotation notifications --block ...`` or ``MSSQL_AUTH_ROTATION_NOTIFICATION_BLOCK``;
rotation/notifications_installer.py resolves it and installs the automations (docs/notifications.md).

Pure logic: no Prefect, no network. Errors say what to do.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

BLOCK_ENV: Final = "MSSQL_AUTH_ROTATION_NOTIFICATION_BLOCK"
AUTOMATIONS_FILE: Final = (
    Path(__file__).resolve().parent.parent / "deployments" / "automations" / "notify-failures.yaml"
)
SEND_NOTIFICATION: Final = "send-notification"
EXAMPLE: Final = "slack-webhook/rotation-alerts"
# Prefect's rule for block type slugs and block document names (prefect.types.names).
_PREFECT_NAME = re.compile(r"^[a-z0-9-]+$")


class NotificationSetupError(Exception):
    """The notification setting, the automations' file or the block is not usable; says what to do."""


@dataclass(frozen=True)
class BlockRef:
    """A Prefect block by its type's slug and its own name, as ``prefect block ls`` shows it."""

    type_slug: str
    name: str

    def __str__(self) -> str:
        return f"{self.type_slug}/{self.name}"


def parse_block_setting(value: str | None) -> BlockRef:
    """``slack-webhook/rotation-alerts`` → BlockRef; NotificationSetupError naming the problem otherwise."""
    text = (value or "").strip()
    if not text:
        raise NotificationSetupError(
            "no notification block is named: pass --block <block-type-slug>/<block-name> (or set "
            f"{BLOCK_ENV}), e.g. {EXAMPLE}; `prefect block ls` lists your server's blocks in that form"
        )
    type_slug, slash, name = text.partition("/")
    if not slash or not type_slug or not name:
        raise NotificationSetupError(
            f"notification block {text!r} is not <block-type-slug>/<block-name>: name both, e.g. {EXAMPLE} "
            "(the slug is the block's type, such as slack-webhook, ms-teams-webhook, pager-duty-webhook, "
            "custom-webhook; `prefect block ls` lists your blocks in that form)"
        )
    for part, what in ((type_slug, "block type slug"), (name, "block name")):
        if not _PREFECT_NAME.match(part):
            raise NotificationSetupError(
                f"notification block {text!r}: the {what} {part!r} is not one Prefect can have (only "
                f"lowercase letters, digits and dashes, e.g. {EXAMPLE}); `prefect block ls` shows the "
                "exact <block-type-slug>/<block-name> of each block"
            )
    return BlockRef(type_slug=type_slug, name=name)


def parse_automations(text: str, source: str) -> list[dict[str, Any]]:
    """The automations of the file's ``automations:`` list, each with a name, a description and at
    least one action, every action a ``send-notification`` whose block is left to the installer."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise NotificationSetupError(f"{source} is not valid YAML: {exc}") from None
    automations = data.get("automations") if isinstance(data, dict) else None
    if not isinstance(automations, list) or not automations:
        raise NotificationSetupError(f"{source} has no `automations:` list; see docs/notifications.md")
    names: set[str] = set()
    for index, automation in enumerate(automations):
        where = f"{source}: automation {index + 1}"
        if not isinstance(automation, dict):
            raise NotificationSetupError(f"{where} is not a mapping")
        name = automation.get("name")
        if not isinstance(name, str) or not name.strip():
            raise NotificationSetupError(f"{where} has no name (the installer finds it again by its name)")
        if name in names:
            raise NotificationSetupError(f"{source}: two automations are named {name!r}; give each its own")
        names.add(name)
        if not str(automation.get("description") or "").strip():
            raise NotificationSetupError(f"{source}: automation {name!r} has no description")
        actions = automation.get("actions")
        if not isinstance(actions, list) or not actions:
            raise NotificationSetupError(f"{source}: automation {name!r} has no actions")
        for action in actions:
            if not isinstance(action, dict) or action.get("type") != SEND_NOTIFICATION:
                raise NotificationSetupError(
                    f"{source}: automation {name!r} has an action that is not {SEND_NOTIFICATION!r}; "
                    "this file only notifies (recovery's triggers are in prefect.yaml)"
                )
            if "block_document_id" in action:
                raise NotificationSetupError(
                    f"{source}: automation {name!r} names a block_document_id; leave it out, the installer "
                    "fills in the block given with --block"
                )
    return automations


def with_block(automations: list[dict[str, Any]], block_document_id: str) -> list[dict[str, Any]]:
    """A copy of the automations whose every notification goes through that block."""
    filled = copy.deepcopy(automations)
    for automation in filled:
        for action in automation["actions"]:
            action["block_document_id"] = block_document_id
    return filled


def not_a_notification_block(block: BlockRef, capabilities: list[str]) -> str:
    return (
        f"block {block} is not a notification block (its capabilities: {', '.join(capabilities) or 'none'}): "
        "name a block of a notification type, such as slack-webhook, ms-teams-webhook, pager-duty-webhook, "
        "sendgrid-email or custom-webhook"
    )


def missing_block(block: BlockRef, api_url: str, notification_types: list[str]) -> str:
    """What to do when the server has no such block (or no such block type)."""
    if block.type_slug not in notification_types:
        known = ", ".join(sorted(notification_types)) or "none"
        return (
            f"the Prefect server at {api_url} has no notification block type {block.type_slug!r} (its "
            f"notification block types: {known}); fix the slug in {block}, e.g. Teams is ms-teams-webhook"
        )
    return (
        f"the Prefect server at {api_url} has no {block.type_slug} block named {block.name!r}: create it "
        f"first (Prefect UI -> Blocks -> + -> pick the {block.type_slug} type, name it {block.name}; or in "
        "Python, e.g. SlackWebhook(url=...).save('rotation-alerts')), then run this command again. "
        "docs/notifications.md shows each type"
    )
