//! The gRPC stream delivers every diagnosis, in order, to concurrent watchers, with replay.

use std::time::Duration;

use archwatch::diagnose::{Exit, Identity, Signal};
use archwatch::inspect::{Inspection, Verdict};
use archwatch::platform::Arch;
use archwatch::sinks::api::{self, pb, ApiState};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

fn diagnosis(i: usize) -> archwatch::diagnose::Diagnosis {
    let insp = Inspection {
        verdict: Verdict::ScriptCrlf,
        cause: format!("cause {i}"),
        fix: "fix".into(),
        fix_code: archwatch::fix::FixCode::ConvertToLf,
        symptom: "no such file or directory",
        argv: vec!["/entrypoint.sh".into()],
        node_arch: Arch::Amd64,
        binary_arch: None,
        handler: None,
        chain: Vec::new(),
        findings: Vec::new(),
        bytes_read: 0,
        suspects: Vec::new(),
    };
    let who = Identity {
        pod: Some(format!("pod-{i}")),
        pod_namespace: Some("shop".into()),
        ..Default::default()
    };
    archwatch::diagnose::diagnose(
        "n",
        &who,
        &insp,
        &Exit {
            signal: Signal::TaskExit,
            exit_code: Some(1),
            started_at: None,
            exited_at: None,
        },
    )
    .unwrap()
}

#[test]
fn two_watchers_get_every_diagnosis_in_order_and_replay_works() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let state = ApiState::new("n", "amd64");
        let stop = CancellationToken::new();
        let server = api::serve(&sock, state.clone(), stop.clone())
            .await
            .unwrap();
        for i in 0..10 {
            state.publish(&diagnosis(i), chrono::Utc::now());
        }
        let total = 500usize;
        let mut watchers = Vec::new();
        for _ in 0..2 {
            let mut c = api::connect(&sock).await.unwrap();
            let stream = c
                .watch_diagnoses(pb::WatchDiagnosesRequest {
                    replay: 10,
                    no_follow: false,
                })
                .await
                .unwrap()
                .into_inner();
            watchers.push(tokio::spawn(async move {
                stream
                    .take(10 + total)
                    .map(|d| d.unwrap().sequence)
                    .collect::<Vec<u64>>()
                    .await
            }));
        }
        for i in 10..10 + total {
            state.publish(&diagnosis(i), chrono::Utc::now());
            if i % 50 == 0 {
                tokio::task::yield_now().await;
            }
        }
        let want: Vec<u64> = (1..=(10 + total) as u64).collect();
        for w in watchers {
            let got = tokio::time::timeout(Duration::from_secs(20), w)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got, want);
        }
        // Replay without follow ends by itself.
        let mut c = api::connect(&sock).await.unwrap();
        let replayed: Vec<pb::Diagnosis> = c
            .watch_diagnoses(pb::WatchDiagnosesRequest {
                replay: 3,
                no_follow: true,
            })
            .await
            .unwrap()
            .into_inner()
            .map(|d| d.unwrap())
            .collect()
            .await;
        assert_eq!(
            replayed.iter().map(|d| d.pod.as_str()).collect::<Vec<_>>(),
            vec!["pod-507", "pod-508", "pod-509"]
        );
        assert_eq!(replayed[0].verdict, "script_crlf");
        assert_eq!(replayed[0].reason, "ScriptCRLF");
        assert_eq!(replayed[0].fix_code, "convert_to_lf");
        let st = c
            .get_status(pb::GetStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(st.diagnoses, 510);
        stop.cancel();
        let _ = server.await;
        assert!(!sock.exists(), "the socket is removed on shutdown");
    });
}
