//! `statiko.v1.ClusterService`: the edges, from their leased status records.

use statiko_common::model::{self, NodeStatusRecord};
use statiko_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::Api;
use crate::convert::node_to_proto;
use crate::error::ControlError;

#[tonic::async_trait]
impl pb::cluster_service_server::ClusterService for Api {
    async fn list_nodes(
        &self,
        _request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let state = &self.ctx.state;
        let snapshot = state
            .store
            .snapshot(&state.keys.nodes())
            .await
            .map_err(ControlError::from)?;
        let mut nodes = Vec::with_capacity(snapshot.kvs.len());
        for kv in &snapshot.kvs {
            match model::decode::<NodeStatusRecord>(&kv.value) {
                Ok(node) => nodes.push(node_to_proto(&node)),
                Err(err) => {
                    tracing::warn!(key = %kv.key, error = %err, "skipping unreadable node status")
                }
            }
        }
        // The desired-state revision (node status writes do not move it), comparable with what
        // each edge reports as applied.
        let desired = state
            .store
            .get(&state.keys.meta_state())
            .await
            .map_err(ControlError::from)?
            .map_or(0, |kv| kv.mod_revision);
        Ok(Response::new(pb::ListNodesResponse {
            nodes,
            revision: desired,
        }))
    }
}
