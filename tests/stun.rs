//! STUN Binding on the super node's UDP port, checked with a standard client.

mod common;

#[actix_rt::test]
async fn a_raw_binding_request_gets_our_address() {
    let t = common::start(1, |_| {}).await;
    let sn = t.net.info.supernodes[0].udp;
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    req.extend_from_slice(&[3; 12]);
    udp.send_to(&req, sn).await.unwrap();
    let mut buf = [0u8; 512];
    let (n, _) =
        tokio::time::timeout(std::time::Duration::from_secs(2), udp.recv_from(&mut buf)).await.unwrap().unwrap();
    assert_eq!(confab::wire::stun::parse_xor_mapped_address(&buf[..n]), Some(udp.local_addr().unwrap()));
    assert!(t.metric(&t.metrics().await, "confab_stun_requests_total", &["outcome=\"answered\""]) >= 1.0);
    t.net.stop().await;
}

#[actix_rt::test]
async fn turnutils_stunclient_learns_its_address() {
    let found = std::process::Command::new("sh")
        .args(["-c", "command -v turnutils_stunclient"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if common::missing("turnutils_stunclient (Debian package coturn)", found) {
        return;
    }
    let t = common::start(1, |_| {}).await;
    let sn = t.net.info.supernodes[0].udp;
    let out = tokio::process::Command::new("turnutils_stunclient")
        .args(["-p", &sn.port().to_string(), "-L", "127.0.0.1", &sn.ip().to_string()])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("reflexive addr: 127.0.0.1:"), "{text}");
    t.net.stop().await;
}
