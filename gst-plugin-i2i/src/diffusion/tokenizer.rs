// SPDX-License-Identifier: MPL-2.0
//! CLIP byte-level BPE tokenizer (the SD text encoders' tokenizer).
