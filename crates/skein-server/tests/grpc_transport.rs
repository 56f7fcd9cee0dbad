//! The OTLP/gRPC receiver's HTTP/2 settings: sized for OTLP batches, which are hundreds of KiB.
//! With HTTP/2's defaults (64 KiB windows, 16 KiB frames) every batch waits for window
//! updates on the way in, which held the receiver to a third of its throughput.

mod common;

use std::collections::HashMap;

use common::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// HTTP/2 SETTINGS identifiers (RFC 9113 §6.5.2).
const INITIAL_WINDOW_SIZE: u16 = 0x4;
const MAX_FRAME_SIZE: u16 = 0x5;
/// Frame types.
const SETTINGS: u8 = 0x4;
const WINDOW_UPDATE: u8 = 0x8;

/// Reads one frame: (type, flags, stream, payload).
async fn frame(tcp: &mut tokio::net::TcpStream) -> (u8, u8, u32, Vec<u8>) {
    let mut head = [0u8; 9];
    tcp.read_exact(&mut head).await.unwrap();
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0; len];
    tcp.read_exact(&mut payload).await.unwrap();
    (head[3], head[4], stream, payload)
}

#[tokio::test]
async fn the_grpc_receiver_offers_windows_and_frames_sized_for_otlp_batches() {
    let server = TestServer::start().await;
    let mut tcp = tokio::net::TcpStream::connect(server.grpc).await.unwrap();
    // Client preface and an empty SETTINGS frame.
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    tcp.write_all(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0]).await.unwrap();

    // The server's first frame is its SETTINGS; the connection window is raised by a
    // WINDOW_UPDATE on stream 0.
    let mut settings = HashMap::new();
    let mut connection_window_increment = 0u32;
    for _ in 0..4 {
        let Ok((kind, flags, stream, payload)) =
            tokio::time::timeout(std::time::Duration::from_secs(5), frame(&mut tcp)).await
        else {
            break;
        };
        match kind {
            SETTINGS if flags & 1 == 0 => {
                for entry in payload.chunks(6) {
                    let id = u16::from_be_bytes([entry[0], entry[1]]);
                    let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
                    settings.insert(id, value);
                }
            }
            WINDOW_UPDATE if stream == 0 => {
                connection_window_increment =
                    u32::from_be_bytes(payload[..4].try_into().unwrap()) & 0x7fff_ffff;
            }
            _ => {}
        }
        if !settings.is_empty() && connection_window_increment > 0 {
            break;
        }
    }
    assert_eq!(settings.get(&INITIAL_WINDOW_SIZE), Some(&(2 * 1024 * 1024)), "{settings:?}");
    assert_eq!(settings.get(&MAX_FRAME_SIZE), Some(&(1024 * 1024)), "{settings:?}");
    // The connection window starts at 65,535 and is raised to 8 MiB.
    assert_eq!(connection_window_increment, 8 * 1024 * 1024 - 65_535);
    drop(tcp);
    server.stop().await;
}
