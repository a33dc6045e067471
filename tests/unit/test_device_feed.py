"""Batches onto the training device (crdist/data/device_feed.py): on the CPU a batch is moved as it
is asked for; the overlapped schedule queues batch k+1's copy before batch k reaches the consumer
and waits for a batch's copy before handing it over; on CUDA the batches arrive bit for bit."""

import pytest
import torch

from crdist.data.device_feed import device_feed, overlapped


def batches(n, log=None, text=False):
    for k in range(n):
        if log is not None:
            log.append(f"read {k}")
        inputs = {"input_ids": torch.full((2, 3), k), "attention_mask": torch.ones(2, 3, dtype=torch.long)} if text \
            else torch.full((2, 3), float(k))
        yield inputs, torch.tensor([k, k])


def test_on_the_cpu_each_batch_is_read_when_asked_for_and_passed_on_as_it_is():
    log = []
    feed = device_feed(batches(3, log), "cpu")
    assert log == []  # nothing read before the first step asks
    inputs, labels = next(feed)
    assert log == ["read 0"] and inputs.device.type == "cpu" and labels.tolist() == [0, 0]
    assert [labels.tolist() for _, labels in feed] == [[1, 1], [2, 2]] and log == ["read 0", "read 1", "read 2"]


class RecordingCopier:
    """The schedule's calls, in order: what a CUDA copier would queue and wait for."""

    def __init__(self, log):
        self.log = log

    def issue(self, batch):
        self.log.append(f"copy {int(batch[1][0])}")
        return batch

    def ready(self, handle):
        self.log.append(f"wait {int(handle[1][0])}")
        return handle


def test_the_next_batchs_copy_is_queued_before_the_current_batch_is_used():
    log = []
    for inputs, labels in overlapped(batches(3, log), RecordingCopier(log)):
        log.append(f"step {int(labels[0])}")
        assert inputs[0, 0].item() == labels[0].item()
    assert log == ["read 0", "copy 0", "read 1", "copy 1", "wait 0", "step 0",
                   "read 2", "copy 2", "wait 1", "step 1",
                   "wait 2", "step 2"]
    assert list(overlapped(iter([]), RecordingCopier([]))) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA copy path needs a CUDA device")
@pytest.mark.parametrize("text", [False, True])
def test_on_cuda_batches_arrive_from_pinned_memory_bit_for_bit(text):
    expected = list(batches(4, text=text))
    moved = list(device_feed(batches(4, text=text), "cuda"))
    torch.cuda.synchronize()
    for (inputs, labels), (want_inputs, want_labels) in zip(moved, expected, strict=True):
        assert labels.device.type == "cuda" and torch.equal(labels.cpu(), want_labels)
        if text:
            assert all(torch.equal(inputs[k].cpu(), want_inputs[k]) for k in want_inputs)
        else:
            assert inputs.device.type == "cuda" and torch.equal(inputs.cpu(), want_inputs)
