//! Thread keys and key rings (DESIGN.md §4).
