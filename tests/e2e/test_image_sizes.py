"""Each image stays within its size budget (issue 23): podman's uncompressed size of
the images the e2e stage built, against scripts/images.d/budgets (the file
`scripts/images` prints them against, too). A failure names the image, its size and
its budget; `scripts/images sizes` and the image's build stage say where it grew."""

from __future__ import annotations

import pytest

from tests.e2e import realpod

pytestmark = [pytest.mark.e2e]

BUDGETS_FILE = realpod.ROOT / "scripts/images.d/budgets"


def budgets() -> dict[str, int]:
    out: dict[str, int] = {}
    for line in BUDGETS_FILE.read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if fields:
            out[fields[0]] = int(fields[1])
    return out


def test_budgets_cover_the_agent_variants_and_the_webhook() -> None:
    assert budgets() == {"agent": 300, "agent-core": 150, "webhook": 120}


@pytest.mark.parametrize("name", sorted(budgets()))
def test_image_within_its_size_budget(images: None, name: str) -> None:
    image = f"localhost/tracecar-{name}:{realpod.TAG}"
    size = int(realpod.podman("image", "inspect", "--format", "{{.Size}}", image))
    budget_mb = budgets()[name]
    assert size <= budget_mb * 1_000_000, (
        f"{image} is {size / 1e6:.1f} MB, over its budget of {budget_mb} MB "
        f"({BUDGETS_FILE.relative_to(realpod.ROOT)})"
    )
