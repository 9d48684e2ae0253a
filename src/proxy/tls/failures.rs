//! Handshakes that did not complete, counted by why: what an operator needs to tell clients
//! that refuse the certificate (`alert`) from clients too old for TLS 1.2 (`incompatible`), plain
//! HTTP sent to the TLS port (`protocol`), scanners that connect and go (`eof`) and clients that
//! stall (`timeout`).
//!
//! The reasons are a fixed set, so that the metric's label stays bounded whatever clients send.
//! Counting is one relaxed atomic add on the failure path; a handshake that succeeds costs
//! nothing. The counts are read at scrape time by the metrics (`observe::metrics`).
//!
//! rustls chooses no certificate only when the resolver has none to give, and graygate's always
//! has the default one: a name no certificate has gets the default certificate rather than a
//! failed handshake, so there is no "no certificate" reason.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a TLS handshake failed: the `reason` label of `graygate_tls_handshake_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    /// Not done within the header timeout: a client that stalls or sends too little.
    Timeout,
    /// The client closed (or reset) the connection before the handshake was done: scanners,
    /// port checks, clients that gave up.
    Eof,
    /// The client ended the handshake with an alert, most often because it does not accept the
    /// certificate (unknown CA, expired, not for the name it asked).
    Alert,
    /// Client and server have nothing in common: a TLS version (the client offers only TLS
    /// 1.1 or older), a cipher suite, or an ALPN protocol.
    Incompatible,
    /// Anything else: not TLS at all (plain HTTP sent to the TLS port), a malformed or
    /// unexpected message, an I/O error.
    Protocol,
}

impl HandshakeFailure {
    /// Every reason, in the order of their counters.
    pub const ALL: [HandshakeFailure; 5] = [
        HandshakeFailure::Timeout,
        HandshakeFailure::Eof,
        HandshakeFailure::Alert,
        HandshakeFailure::Incompatible,
        HandshakeFailure::Protocol,
    ];

    /// The label value: `timeout`, `eof`, `alert`, `incompatible`, `protocol`.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Eof => "eof",
            HandshakeFailure::Alert => "alert",
            HandshakeFailure::Incompatible => "incompatible",
            HandshakeFailure::Protocol => "protocol",
        }
    }

    /// Why a handshake that tokio-rustls ended with `error` failed. tokio-rustls hands rustls'
    /// own error inside an `InvalidData` I/O error; the connection's end comes as the I/O error
    /// of the socket.
    pub fn of(error: &io::Error) -> HandshakeFailure {
        use io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
        if matches!(
            error.kind(),
            UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
        ) {
            return HandshakeFailure::Eof;
        }
        match error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            Some(rustls::Error::AlertReceived(_)) => HandshakeFailure::Alert,
            Some(rustls::Error::PeerIncompatible(_) | rustls::Error::NoApplicationProtocol) => {
                HandshakeFailure::Incompatible
            }
            _ => HandshakeFailure::Protocol,
        }
    }
}

/// The failed handshakes of the TLS listeners since start, by reason. Shared by every listener
/// (they share one [`super::TlsTerminator`]).
#[derive(Debug, Default)]
pub struct HandshakeFailures {
    /// Indexed like [`HandshakeFailure::ALL`].
    counts: [AtomicU64; HandshakeFailure::ALL.len()],
}

impl HandshakeFailures {
    /// Counts one failed handshake.
    pub fn count(&self, reason: HandshakeFailure) {
        self.counts[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The handshakes that failed for `reason` since start.
    pub fn get(&self, reason: HandshakeFailure) -> u64 {
        self.counts[reason as usize].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_the_order_of_the_counters() {
        for (i, reason) in HandshakeFailure::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, i, "{reason:?}");
        }
    }

    #[test]
    fn errors_are_sorted_into_a_few_reasons() {
        let rustls_error = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        let cases = [
            (
                io::Error::new(io::ErrorKind::UnexpectedEof, "tls handshake eof"),
                HandshakeFailure::Eof,
            ),
            (io::ErrorKind::ConnectionReset.into(), HandshakeFailure::Eof),
            (
                rustls_error(rustls::Error::AlertReceived(
                    rustls::AlertDescription::UnknownCA,
                )),
                HandshakeFailure::Alert,
            ),
            (
                rustls_error(rustls::Error::PeerIncompatible(
                    rustls::PeerIncompatible::Tls12NotOffered,
                )),
                HandshakeFailure::Incompatible,
            ),
            (
                rustls_error(rustls::Error::NoApplicationProtocol),
                HandshakeFailure::Incompatible,
            ),
            (
                rustls_error(rustls::Error::InvalidMessage(
                    rustls::InvalidMessage::InvalidContentType,
                )),
                HandshakeFailure::Protocol,
            ),
            (
                io::Error::other("something else"),
                HandshakeFailure::Protocol,
            ),
        ];
        for (error, want) in cases {
            assert_eq!(HandshakeFailure::of(&error), want, "{error:?}");
        }
    }

    #[test]
    fn counts_by_reason() {
        let failures = HandshakeFailures::default();
        failures.count(HandshakeFailure::Eof);
        failures.count(HandshakeFailure::Eof);
        failures.count(HandshakeFailure::Timeout);
        assert_eq!(failures.get(HandshakeFailure::Eof), 2);
        assert_eq!(failures.get(HandshakeFailure::Timeout), 1);
        assert_eq!(failures.get(HandshakeFailure::Protocol), 0);
    }
}
