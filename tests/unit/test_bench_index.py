"""``pdserve bench index``'s fleet: the shape it claims (its timings are the bench's business)."""

from __future__ import annotations

from pdserve.tools.bench.index import Shape, build


def test_the_fleet_has_the_blocks_and_holders_it_claims() -> None:
    shape = Shape(blocks=5000, workers=16, chain=8, shared=4, family_prompts=10, family_workers=4, replicas=2, seed=1)
    fleet = build(shape)
    distinct = set(fleet.chains)
    assert len(distinct) == fleet.distinct >= shape.blocks
    assert all(len(set(held)) == len(held) for held in fleet.held)  # each worker's blocks once
    assert set().union(*(set(h) for h in fleet.held)) == distinct  # every block has a holder
    for i in range(len(fleet.chains) // shape.chain):
        chain = set(fleet.chain(i, shape.chain))
        assert sum(chain <= set(held) for held in fleet.held) >= shape.replicas  # whole chain on replicas
