"""Token files are read again when they change, as a rotated Secret does (issue 11, finding 13)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from modelfleet_runtime.settings import Settings
from tests.support.live_server import live_server
from tests.support.polling import wait_for


def rotate(mount: Path, token: str, generation: int) -> None:
    """What the kubelet does to a Secret volume: a new folder, then one atomic swap of `..data`."""
    folder = mount / f"..generation-{generation}"
    folder.mkdir()
    (folder / "token").write_text(token + "\n")
    link = mount / "..data-next"
    os.symlink(folder.name, link)
    os.replace(link, mount / "..data")


def secret_volume(mount: Path, token: str) -> Path:
    mount.mkdir()
    rotate(mount, token, 0)
    os.symlink("..data/token", mount / "token")
    return mount / "token"


async def test_a_rotated_token_is_in_force_without_a_restart(mlp_path: Path, tmp_path: Path) -> None:
    predict_token = secret_volume(tmp_path / "predict", "first")
    feedback_token = secret_volume(tmp_path / "feedback", "fb-first")
    settings = Settings(
        model=str(mlp_path),
        warmup_iterations=1,
        predict_token_file=str(predict_token),
        feedback_dir=str(tmp_path / "volume"),
        feedback_token_file=str(feedback_token),
    )
    row = {"features": [1, 2, 3, 4]}

    async def predict(live_client: httpx.AsyncClient, token: str) -> int:
        return (await live_client.post("/predict", json=row, headers={"authorization": f"Bearer {token}"})).status_code

    async def feedback(live_client: httpx.AsyncClient, token: str) -> int:
        answer = await live_client.post(
            "/feedback", json={**row, "label": 1.0}, headers={"authorization": f"Bearer {token}"}
        )
        return answer.status_code

    async with live_server(settings) as live:
        assert await predict(live.client, "first") == 200
        assert await feedback(live.client, "fb-first") == 200
        rotate(tmp_path / "predict", "second", 1)
        rotate(tmp_path / "feedback", "fb-second", 1)

        async def rotated() -> bool:
            return await predict(live.client, "second") == 200 and await feedback(live.client, "fb-second") == 200

        await wait_for(rotated, timeout=30)
        old_predict = await predict(live.client, "first")
        old_feedback = await feedback(live.client, "fb-first")
        new_predict = await predict(live.client, "second")
    assert (old_predict, old_feedback, new_predict) == (401, 401, 200)
