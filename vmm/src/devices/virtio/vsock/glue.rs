//! `VsockDevice` as a [`VirtioDevice`], so the MMIO transport can carry it.

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{VsockDevice, NUM_QUEUES, QUEUE_SIZE, RX_QUEUE, TX_QUEUE};
use crate::devices::virtio::{read_config_bytes, VirtioDevice, F_VERSION_1, TYPE_VSOCK};

impl VirtioDevice for VsockDevice {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }
    fn name(&self) -> String {
        "virtio-vsock".into()
    }
    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }
    fn queue_max_size(&self) -> u16 {
        QUEUE_SIZE
    }
    fn features(&self) -> u64 {
        F_VERSION_1
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space(), offset, data);
    }
    fn process_queue(
        &self,
        mem: &GuestMemoryMmap,
        index: usize,
        queue: &mut Queue,
    ) -> Result<bool, String> {
        let r = match index {
            RX_QUEUE => self.process_rx(mem, queue),
            TX_QUEUE => self.process_tx(mem, queue),
            // The event queue: hutch never sends transport events.
            _ => Ok(false),
        };
        r.map_err(|e| e.to_string())
    }
    fn wake_event(&self) -> Option<(&EventFd, usize)> {
        Some((self.wake_fd(), RX_QUEUE))
    }
    fn reset(&self) {
        VsockDevice::reset(self);
    }
}
