//! What one replica keeps of a slot's mail: retention and quotas, with the reasons for
//! their defaults.

/// A day in milliseconds.
const DAY_MS: u64 = 24 * 3600 * 1000;

/// Devices remembered per recipient: a user's phones, laptops and spare home folders
/// seen within the retention window. Past it the least recently seen is forgotten.
pub const DEVICES_PER_USER_MAX: usize = 16;

/// Retention and quotas of a mail store. Quotas count what is held, so they free up as
/// messages are acknowledged or expire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailLimits {
    /// How long a message waits for its recipient, and how long a tombstone outlives
    /// the message it stands for (30 days: a holiday away from every device).
    pub retention_ms: u64,
    /// Messages held for one recipient (2,000: a month of a busy conversation or two).
    pub recipient_messages_max: usize,
    /// Bytes held for one recipient (4 MiB: 2,000 messages of 2 KiB).
    pub recipient_bytes_max: u64,
    /// Messages held from one sender across all recipients in this slot (500: a slot
    /// holds 1/2048 of all users, so an honest sender rarely has more than one or two
    /// recipients in it; a flood is stopped here before it fills the recipient's box).
    pub sender_messages_max: usize,
    /// Bytes held from one sender across all recipients in this slot (1 MiB).
    pub sender_bytes_max: u64,
}

impl Default for MailLimits {
    fn default() -> Self {
        Self {
            retention_ms: 30 * DAY_MS,
            recipient_messages_max: 2000,
            recipient_bytes_max: 4 << 20,
            sender_messages_max: 500,
            sender_bytes_max: 1 << 20,
        }
    }
}
