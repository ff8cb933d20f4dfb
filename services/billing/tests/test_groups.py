"""Teams and projects inside an account, and keys that belong to them, against real databases (SQLite and
PostgreSQL): created, listed, renamed, archived, restored, validated on every key that names one, and rebuilt from
the log into the same state."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from billing_support import MODEL, Database, FakeClock, assert_rebuild_equals_live, static_prices
from tollgate.events.v1.billing_pb2 import GROUP_KIND_PROJECT, GROUP_KIND_TEAM
from tollgate_billing import errors
from tollgate_billing.application import Billing
from tollgate_billing.group_admin import GroupAdmin
from tollgate_billing.key_admin import KeyAdmin
from tollgate_billing.tables import metadata
from tollgate_common.db import create_engine, create_schema

NANOS = 10**9


class TestGroups:
    @pytest.fixture
    async def billing(self, db: Database) -> AsyncIterator[Billing]:
        engine = create_engine(db.url, schema=db.schema)
        await create_schema(engine, metadata, schema=db.schema)
        yield Billing(engine, static_prices(), clock=FakeClock())
        await engine.dispose()

    async def _account(self, billing: Billing, name: str = "Acme") -> str:
        account, _ = await billing.create_account(name)
        await billing.add_credits(account.account_id, NANOS, "seed")
        return account.account_id

    async def test_teams_and_projects_are_created_listed_renamed_archived_and_restored(self, billing: Billing) -> None:
        groups = GroupAdmin(billing)
        account = await self._account(billing)
        research, created = await groups.create_group(account, GROUP_KIND_TEAM, "Research", "research")
        assert created and (research.group_id, research.name, research.kind) == ("research", "Research", "team")
        generated, _ = await groups.create_group(account, GROUP_KIND_TEAM, "Sales")
        assert generated.group_id.startswith("team_")
        bot, _ = await groups.create_group(account, GROUP_KIND_PROJECT, "Chat bot", "bot")
        assert [g.group_id for g in await groups.list_groups(account, GROUP_KIND_TEAM)] == ["research",
                                                                                            generated.group_id]
        assert [g.group_id for g in await groups.list_groups(account, GROUP_KIND_PROJECT)] == ["bot"]

        again, created_again = await groups.create_group(account, GROUP_KIND_TEAM, "Research", "research")
        assert not created_again and again == research  # a retry with the same id and name
        with pytest.raises(errors.GroupExists):
            await groups.create_group(account, GROUP_KIND_TEAM, "Another name", "research")

        renamed = await groups.update_group(account, GROUP_KIND_TEAM, "research", name="R&D")
        assert (renamed.name, renamed.revision) == ("R&D", 1)
        archived = await groups.update_group(account, GROUP_KIND_TEAM, "research", archived=True)
        assert archived.archived and archived.name == "R&D"
        assert [g.group_id for g in await groups.list_groups(account, GROUP_KIND_TEAM)] == [generated.group_id]
        listed = await groups.list_groups(account, GROUP_KIND_TEAM, include_archived=True)
        assert {g.group_id for g in listed} == {"research", generated.group_id}
        restored = await groups.update_group(account, GROUP_KIND_TEAM, "research", archived=False)
        assert not restored.archived and restored.revision == 3
        same = await groups.update_group(account, GROUP_KIND_TEAM, "research", name="R&D")
        assert same.revision == 3  # nothing changed: no event
        assert (await groups.get_group(account, GROUP_KIND_PROJECT, "bot")) == bot

    async def test_bad_names_ids_and_unknown_groups_are_refused(self, billing: Billing) -> None:
        groups = GroupAdmin(billing)
        account = await self._account(billing)
        for name, group_id in (("", "x"), ("  ", "x"), ("n" * 201, "x"), ("ok", "has space"), ("ok", "-lead"),
                               ("ok", "a/b"), ("ok", "x" * 101)):
            with pytest.raises(errors.InvalidArgument):
                await groups.create_group(account, GROUP_KIND_TEAM, name, group_id)
        with pytest.raises(errors.InvalidArgument):
            await groups.create_group(account, 0, "no kind", "k")
        with pytest.raises(errors.GroupNotFound) as missing:
            await groups.get_group(account, GROUP_KIND_TEAM, "nope")
        assert missing.value.reason == "team_not_found"
        with pytest.raises(errors.AccountNotFound):
            await groups.create_group("acct_missing", GROUP_KIND_TEAM, "x", "x")

    async def test_a_key_joins_only_a_real_active_group_of_its_own_account(self, billing: Billing) -> None:
        groups, keys = GroupAdmin(billing), KeyAdmin(billing)
        mine, theirs = await self._account(billing, "Mine"), await self._account(billing, "Theirs")
        await groups.create_group(mine, GROUP_KIND_TEAM, "ML", "ml")
        await groups.create_group(mine, GROUP_KIND_PROJECT, "Bot", "bot")
        await groups.create_group(theirs, GROUP_KIND_TEAM, "Their ML", "their-ml")
        key = await billing.create_api_key(mine, team="ml", project="bot")
        result = await billing.authorize(key.api_key, "req_1", MODEL, 10, 10)
        assert (result.team, result.project) == ("ml", "bot")  # what the usage event will carry

        with pytest.raises(errors.GroupNotFound) as unknown:
            await billing.create_api_key(mine, team="ghost")
        assert unknown.value.reason == "team_not_found"
        with pytest.raises(errors.GroupNotFound):
            await billing.create_api_key(mine, team="their-ml")  # another account's team is not found here
        with pytest.raises(errors.GroupNotFound) as unknown_project:
            await billing.create_api_key(mine, project="ghost")
        assert unknown_project.value.reason == "project_not_found"

        await groups.update_group(mine, GROUP_KIND_TEAM, "ml", archived=True)
        with pytest.raises(errors.GroupArchived):
            await billing.create_api_key(mine, team="ml")
        await billing.authorize(key.api_key, "req_2", MODEL, 10, 10)  # keys already in it keep working

        await groups.create_group(mine, GROUP_KIND_TEAM, "Search", "search")
        moved = await keys.update_key(mine, key.key_id, team="search", project="")
        assert (moved.team, moved.project) == ("search", "")
        result = await billing.authorize(key.api_key, "req_3", MODEL, 10, 10)
        assert (result.team, result.project) == ("search", "")  # at once on this replica
        with pytest.raises(errors.GroupArchived):
            await keys.update_key(mine, key.key_id, team="ml")
        with pytest.raises(errors.GroupNotFound):
            await keys.update_key(mine, key.key_id, project="their-ml")
        relabelled = await keys.update_key(mine, key.key_id, label="still in search")
        assert (relabelled.team, relabelled.label) == ("search", "still in search")  # absent team: unchanged

    async def test_groups_and_memberships_rebuild_from_the_log(self, billing: Billing, tmp_path: Path) -> None:
        groups, keys = GroupAdmin(billing), KeyAdmin(billing)
        account = await self._account(billing)
        await groups.create_group(account, GROUP_KIND_TEAM, "ML", "ml")
        await groups.create_group(account, GROUP_KIND_PROJECT, "Bot", "bot")
        await groups.create_group(account, GROUP_KIND_TEAM, "Ops", "ops")
        key = await billing.create_api_key(account, team="ml", project="bot")
        await groups.update_group(account, GROUP_KIND_TEAM, "ml", name="Machine learning", archived=True)
        await keys.update_key(account, key.key_id, team="ops")
        _, report = await assert_rebuild_equals_live(billing.engine, tmp_path)
        assert {t.name: t.live_rows for t in report.tables}["groups"] == 3
