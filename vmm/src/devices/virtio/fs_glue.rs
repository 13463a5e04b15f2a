//! `FsDevice` as a [`VirtioDevice`], so the MMIO transport can carry it.

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::{fs, read_config_bytes, VirtioDevice, TYPE_FS};

impl VirtioDevice for fs::FsDevice {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }
    fn name(&self) -> String {
        format!("virtio-fs {}", self.tag())
    }
    fn num_queues(&self) -> usize {
        fs::FsDevice::NUM_QUEUES
    }
    fn queue_max_size(&self) -> u16 {
        fs::FsDevice::QUEUE_SIZE
    }
    fn features(&self) -> u64 {
        self.device_features()
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let cfg = self.config_space();
        read_config_bytes(&cfg, offset, data);
    }
    fn process_queue(
        &self,
        mem: &GuestMemoryMmap,
        _index: usize,
        queue: &mut Queue,
    ) -> Result<bool, String> {
        fs::FsDevice::process_queue(self, mem, queue).map_err(|e| e.to_string())
    }
    /// The request queue is drained as over vhost-user: each answer announced
    /// as it is used, then the ring watched for the next request (the
    /// `irq_window` and `poll` levers); hiprio once per batch.
    fn process_queue_raising(
        &self,
        mem: &GuestMemoryMmap,
        index: usize,
        queue: &mut Queue,
        raise: &mut dyn FnMut(),
    ) -> Result<bool, String> {
        let drain = self.drain(index, raise);
        self.process_queue_with(mem, queue, drain)
            .map_err(|e| e.to_string())
    }
}
