// SPDX-License-Identifier: MPL-2.0
//! The frame index as a buffer meta, so that it survives elements that renumber buffer
//! offsets: decoders and encoders (jpegdec, jpegenc) set the offset of their output to
//! "none", so an index kept only in the offset is lost on a worker's
//! `jpegdec ! i2itransform ! zmqmsgpacksink`. An untagged custom meta is copied by them
//! (and by i2itransform), like the `timestamp/x-unix` reference meta.
//!
//! Sources of this plugin that know the index set both the offset and this meta; sinks
//! take the index from the meta, else from the offset.

/// Name of the custom meta; its structure has one field, `index` (u64).
pub const META_NAME: &str = "GstZmqFrameIndexMeta";

/// Registers the meta (once per process; called from the plugin's init).
pub fn register() {
    if !gst::meta::CustomMeta::is_registered(META_NAME) {
        gst::meta::CustomMeta::register(META_NAME, &[]);
    }
}

/// Sets the frame index: the buffer offset (and offset end) and the meta.
pub fn set(buffer: &mut gst::BufferRef, index: u64) {
    buffer.set_offset(index);
    buffer.set_offset_end(index.saturating_add(1));
    let existing = gst::meta::CustomMeta::from_mut_buffer(buffer, META_NAME).is_ok();
    let meta = if existing {
        gst::meta::CustomMeta::from_mut_buffer(buffer, META_NAME)
    } else {
        gst::meta::CustomMeta::add(buffer, META_NAME)
    };
    if let Ok(mut meta) = meta {
        meta.mut_structure().set("index", index);
    }
}

/// The frame index from the meta, if the buffer has one.
pub fn from_meta(buffer: &gst::BufferRef) -> Option<u64> {
    gst::meta::CustomMeta::from_buffer(buffer, META_NAME)
        .ok()
        .and_then(|m| m.structure().get::<u64>("index").ok())
}

/// The frame index: from the meta, else from the buffer offset ([`from_offset`]).
pub fn index_of(buffer: &gst::BufferRef) -> Option<u64> {
    from_meta(buffer).or_else(|| from_offset(buffer))
}

/// The frame index a buffer's offset gives, if it numbers frames. Offsets are
/// media-specific: raw video and this plugin's sources number frames (offset_end =
/// offset + 1), byte-stream sources (filesrc, multifilesrc) give byte positions
/// (offset_end - offset = the buffer size); those, and unset offsets, give `None`.
pub fn from_offset(buffer: &gst::BufferRef) -> Option<u64> {
    let offset = buffer.offset();
    if offset == gst::ffi::GST_BUFFER_OFFSET_NONE {
        return None;
    }
    let end = buffer.offset_end();
    let size = buffer.size() as u64;
    let byte_positions = end != gst::ffi::GST_BUFFER_OFFSET_NONE
        && size > 1
        && end.checked_sub(offset) == Some(size);
    (!byte_positions).then_some(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_survives_a_copy_that_drops_the_offset() {
        gst::init().unwrap();
        register();
        let mut buffer = gst::Buffer::with_size(4).unwrap();
        set(buffer.get_mut().unwrap(), 41);
        set(buffer.get_mut().unwrap(), 42);
        assert_eq!(index_of(&buffer), Some(42));
        let mut copy = gst::Buffer::new();
        buffer
            .copy_into(copy.get_mut().unwrap(), gst::BufferCopyFlags::META, ..)
            .unwrap();
        assert_eq!(copy.offset(), u64::MAX, "offsets are not metadata");
        assert_eq!(from_meta(&copy), Some(42));
        let plain = gst::Buffer::with_size(1).unwrap();
        assert_eq!(index_of(&plain), None);
        // A byte position (multifilesrc) is not a frame index.
        let mut bytes = gst::Buffer::with_size(100).unwrap();
        bytes.get_mut().unwrap().set_offset(5000);
        bytes.get_mut().unwrap().set_offset_end(5100);
        assert_eq!(index_of(&bytes), None);
        bytes.get_mut().unwrap().set_offset_end(5001);
        assert_eq!(index_of(&bytes), Some(5000));
    }
}
