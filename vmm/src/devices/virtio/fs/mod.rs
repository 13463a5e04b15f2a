//! virtio-fs device (placeholder, being written).
