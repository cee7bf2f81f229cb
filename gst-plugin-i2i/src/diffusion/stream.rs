// SPDX-License-Identifier: MPL-2.0
//! The stream batch: frames in flight through the denoising steps.
