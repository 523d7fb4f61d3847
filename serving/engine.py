"""The vLLM engine: how the embedded stack starts it, and how the gateway talks to it.

The gateway never links vLLM; it speaks vLLM's OpenAI HTTP API, so the same code drives
the CPU build started here and a GPU deployment elsewhere (``FLYWHEEL_ENGINE_URL``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx


class EngineError(RuntimeError):
    """The engine refused or failed a request; ``status`` is what to tell the caller."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


class EngineClient:
    def __init__(self, base_url: str, timeout: float) -> None:
        self.http = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(timeout, connect=5.0),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def healthy(self) -> bool:
        try:
            return (await self.http.get("/health", timeout=2)).status_code == 200
        except httpx.HTTPError:
            return False

    async def served_models(self) -> set[str]:
        response = await self.http.get("/v1/models", timeout=5)
        response.raise_for_status()
        return {card["id"] for card in response.json()["data"]}

    async def load_adapter(self, name: str, path: Path) -> None:
        """Load a LoRA adapter under a new name; a name already served is left as it is (another gateway on the
        same engine may load it between the check and the load: vLLM's refusal then is no failure)."""
        if name in await self.served_models():
            return
        response = await self.http.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)})
        if response.status_code != 200 and name not in await self.served_models():
            raise EngineError(f"engine refused adapter {name}: {response.status_code} {response.text[:500]}")

    async def unload_adapter(self, name: str) -> None:
        """Unload an adapter; one the engine does not have (404: another gateway or an engine restart removed it)
        is as good as unloaded. vLLM lets requests already running on it finish; new ones get a 404."""
        response = await self.http.post("/v1/unload_lora_adapter", json={"lora_name": name}, timeout=10)
        if response.status_code not in (200, 404):
            raise EngineError(f"engine refused to unload adapter {name}: {response.status_code} {response.text[:500]}")

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await self.http.post("/v1/chat/completions", json=body)
        except httpx.HTTPError as exc:
            raise EngineError(f"engine unreachable: {exc!r}", 503) from exc
        if response.status_code != 200:
            raise _engine_error(response.status_code, response.text)
        result: dict[str, Any] = response.json()
        return result

    async def chat_stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Yields the engine's stream chunks as dicts; the first request error is raised before any yield."""
        request = self.http.build_request("POST", "/v1/chat/completions", json=body)
        try:
            response = await self.http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise EngineError(f"engine unreachable: {exc!r}", 503) from exc
        try:
            if response.status_code != 200:
                raise _engine_error(response.status_code, (await response.aread()).decode(errors="replace"))
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                yield json.loads(data)
        finally:
            await response.aclose()


def _engine_error(status: int, text: str) -> EngineError:
    # vLLM answers 400 for bad sampling parameters or a prompt too long: the caller's fault, say so.
    return EngineError(f"engine: {text[:1000]}", 400 if status == 400 else 502)
