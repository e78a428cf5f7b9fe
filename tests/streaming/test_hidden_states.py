import torch

from sensitivity.streaming.hidden import HiddenStates


def test_hidden_states_spill_to_disk_past_the_budget():
    store = HiddenStates(budget=2 * 16 * 4)  # two (4, 4) fp32 tensors in memory
    values = {k: torch.randn(4, 4) for k in range(5)}
    for k, v in values.items():
        store.put(k, v)
    assert store.resident_bytes == 2 * 64 and store.spilled_bytes == 3 * 64
    for k, v in values.items():
        assert torch.equal(store.get(k), v)
    folder = store._folder
    assert folder is not None and len(list(folder.iterdir())) == 3
    store.drop(4)
    assert 4 not in store and len(list(folder.iterdir())) == 2
    store.close()
    assert not folder.exists()
