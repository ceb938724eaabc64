"""What control's log says is kept when the final checkpoint cannot be written (a full disk)."""

from __future__ import annotations

from crystalline.daemon.control_process import kept_checkpoint


def test_a_failed_final_checkpoint_says_none_is_kept_before_the_first_one() -> None:
    # before: 'final checkpoint failed: [Errno 28] ...; the previous checkpoint (step None) is kept'
    assert kept_checkpoint(None) == "no checkpoint is kept yet (none was written)"
    assert kept_checkpoint(0) == "the previous checkpoint (step 0) is kept"
    assert kept_checkpoint(17) == "the previous checkpoint (step 17) is kept"
