"""Result object writers: SEG (:mod:`.seg`), TID 1500 SR (:mod:`.sr`), burned-in SC (:mod:`.overlay`)."""
